"""hookstream: the command line, the embedded servers and the migrations."""
