"""Text and bytes from providers, made safe to show: on an operator's terminal (the `hookstream`
commands) and on the dashboard's pages, escaped the same way in both.

A dead letter's reason, headers and body, or a sender name, are whatever a provider (or someone posing
as one) sent. Printed raw, an ESC or C1 CSI sequence can recolour or clear the screen, move the
cursor, set the window title or hide a link (OSC 8), and a bidi override can make the text read
differently from what it is. `visible` shows each such character as an escape instead: `\\x1b`,
`\\x9b`, `\\u202e`; a tab, newline or carriage return as `\\t`, `\\n`, `\\r`.

Escaped: every control character (C0, DEL, C1), the bidi marks, embeddings, overrides and isolates
(U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), and the line and paragraph separators
(U+2028, U+2029). A backslash already in the text is left as it is: the output is for reading, not
for decoding back.
"""

from __future__ import annotations

import re

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(char: str) -> str:
    code = ord(char)
    return NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, keep: str = "") -> str:
    """`text` with every unsafe character escaped, except those in `keep` (a body's own newlines and
    tabs, printed as layout)."""
    return UNSAFE.sub(lambda m: m[0] if m[0] in keep else escape(m[0]), text)


def render_bytes(data: bytes) -> tuple[str, str]:
    """("text", …) for UTF-8 without C0 controls other than tab, CR and LF, else ("hex", lines of 32
    bytes): binary never garbles a terminal. The text keeps its newlines and tabs; anything else a
    terminal would act on (CR, C1 controls, bidi overrides and isolates) is shown escaped (`visible`)."""
    try:
        text = data.decode("utf-8")
        if not any((c < " " and c not in "\t\r\n") or c == "\x7f" for c in text):
            return "text", visible(text, keep="\t\n")
    except UnicodeDecodeError:
        pass
    return "hex", "\n".join(data[i : i + 32].hex(" ") for i in range(0, len(data), 32))
