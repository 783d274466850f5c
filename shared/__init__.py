"""Code shared by the ingress and the workers: settings, the stream record, the event model."""
