"""Fault injection for the emulator: by :class:`Faults` flags (settings, CLI), or by tokens in
the license value (split on ``-``, ``_``, ``+`` or ``,``; case-insensitive):

=================  =====================================================================
``reject``/``bad`` ``conversation.connected.fail`` then close
``nobalance``      ``conversation.connected.insufficient_balance`` then close
``dupname``        ``conversation.connected.warning`` (duplicate avatar name) after success
``drop<S>``        the socket is dropped without a close frame S seconds after success
``malformed``      malformed and unknown frames are sent after ``session.updated``
=================  =====================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["Faults"]


@dataclass(frozen=True, slots=True)
class Faults:
    reject: bool = False
    insufficient_balance: bool = False
    duplicate_name: bool = False
    drop_after_s: float = 0.0
    malformed: bool = False

    def with_license(self, license: str) -> Faults:
        """These faults plus those named by tokens in ``license`` (see the module doc)."""
        f = self
        for token in re.split(r"[-_+,]", license.lower()):
            if token in ("reject", "bad", "invalid"):
                f = replace(f, reject=True)
            elif token == "nobalance":
                f = replace(f, insufficient_balance=True)
            elif token == "dupname":
                f = replace(f, duplicate_name=True)
            elif token == "malformed":
                f = replace(f, malformed=True)
            elif m := re.fullmatch(r"drop(\d+(?:\.\d+)?)", token):
                f = replace(f, drop_after_s=float(m.group(1)))
        return f
