"""multipart/form-data bodies, read as leniently as Marketo reads them.

Uses the stdlib ``email`` parser. Tolerates what Marketo's own Java sample and
Talend send: any part content type, ``Content-Transfer-Encoding: text/plain``,
and no closing ``--`` after the last boundary. Refuses a body with no usable
boundary at all.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from email.message import Message


class MultipartError(ValueError):
    """The body cannot be read as multipart (Marketo: 613 Invalid Multipart Request)."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def is_multipart(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


def parse(content_type: str, body: bytes) -> list[Part]:
    """The named parts of ``body``, in order.

    Raises:
        MultipartError: no boundary parameter, or no boundary found in the body.
    """
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart() or not msg.get_boundary():
        raise MultipartError("no multipart boundary")
    parts: list[Part] = []
    for sub in msg.iter_parts():
        assert isinstance(sub, Message)
        name = sub.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            # The empty tail after an unclosed last boundary, or junk: nothing to read.
            continue
        payload = sub.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        parts.append(Part(name=name, filename=sub.get_filename(), content_type=sub.get_content_type(), data=data))
    if not parts:
        raise MultipartError("no named parts")
    return parts
