"""A committee of potentials: K members of one representation, trained from different initial
weights and data orders, that predict together. The mean is the prediction and the spread says where
the members disagree (``ednn_tf.apply.uncertainty``; ``docs/uncertainty.md``).

A committee is stored as a card, ``NAME.committee.json``, that names K ``.keras`` files (paths
relative to the card) with the SHA-256 of each, so a changed or truncated member is refused by name.
:func:`ednn_tf.load_potential` of such a card (a path, or a shipped name) returns a
:class:`Committee`, which the calculator, ``ednn-tf predict/eval`` and
:func:`ednn_tf.apply.space.predict_structures` take where they take a potential.
"""
from __future__ import annotations

import hashlib
import json
import os

from .util import atomic_path

__all__ = ["Committee", "COMMITTEE_SUFFIX", "save_committee", "read_committee_card", "is_committee_file"]

#: The file-name ending of a committee card.
COMMITTEE_SUFFIX = ".committee.json"
_FORMAT = "ednn_tf committee 1"
#: What a committee answers from its first member: the settings every member shares.
_SHARED = ("ednn", "pixel_size", "pitch", "gamma", "cutoff", "channels", "elements", "readout", "max_height",
           "min_vacuum", "orientations", "e0", "scale")


class Committee:
    """``members``: Potentials with the ``"atoms"`` readout, the same elements and channels and the
    same structure limits (``max_height``, ``min_vacuum``); ``card``: a dict (what the committee is,
    how it was trained). Shared settings (``elements``, ``pitch``, ``readout``, ...) are read from
    the first member; predictions go through every member."""

    def __init__(self, members, card=None, path=None):
        members = list(members)
        if not members:
            raise ValueError("a committee needs at least one member, got none")
        first = members[0]
        for k, m in enumerate(members):
            if isinstance(m, Committee) or getattr(m, "readout", None) != "atoms":
                raise ValueError(f"committee member {k} must be a Potential with the 'atoms' readout, "
                                 f"got {type(m).__name__} with readout {getattr(m, 'readout', None)!r}")
            for name in ("elements", "channels", "max_height", "min_vacuum"):
                if getattr(m, name) != getattr(first, name):
                    raise ValueError(f"committee member {k} has {name}={getattr(m, name)!r}, member 0 has "
                                     f"{getattr(first, name)!r}: members must share it")
        self.members, self.card, self.path = members, dict(card or {}), path

    def __len__(self):
        return len(self.members)

    def __getattr__(self, name):
        if name in _SHARED and "members" in self.__dict__:
            return getattr(self.members[0], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __repr__(self):
        return f"Committee({len(self)} members{', ' + self.path if self.path else ''})"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_committee_file(path) -> bool:
    """True for an existing file named ``*.committee.json``."""
    path = os.fspath(path)
    return path.endswith(COMMITTEE_SUFFIX) and os.path.isfile(path)


def save_committee(path, member_paths, card=None):
    """Write the card ``path`` (must end in ``.committee.json``) naming ``member_paths`` (``.keras``
    files, stored relative to the card) with their SHA-256, atomically; returns ``path``."""
    path = os.fspath(path)
    if not path.endswith(COMMITTEE_SUFFIX):
        raise ValueError(f"a committee card's name must end in {COMMITTEE_SUFFIX!r}, got {path!r}")
    if not member_paths:
        raise ValueError("a committee needs at least one member file, got none")
    base = os.path.dirname(os.path.abspath(path))
    members = []
    for m in member_paths:
        if not os.path.isfile(m):
            raise ValueError(f"no member file {os.fspath(m)!r}")
        members.append({"file": os.path.relpath(os.path.abspath(m), base), "sha256": _sha256(m)})
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump({"format": _FORMAT, "members": members, "card": card or {}}, fh, indent=1)
    return path


def read_committee_card(path):
    """``(member files, card dict)`` of the committee card ``path``; ValueError naming the card and
    the member for a card of another format, a missing member file or one whose SHA-256 differs from
    the card's (``ednn_tf.load_potential`` loads the members into a :class:`Committee`)."""
    path = os.fspath(path)
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not read the committee card {path!r}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not doc.get("members"):
        raise ValueError(f"{path!r} is not a committee card (format {_FORMAT!r} with members)")
    base = os.path.dirname(os.path.abspath(path))
    files = []
    for k, m in enumerate(doc["members"]):
        file = os.path.join(base, m["file"])
        if not os.path.isfile(file):
            raise ValueError(f"committee {path!r}: member {k} file {file!r} is missing")
        if _sha256(file) != m["sha256"]:
            raise ValueError(f"committee {path!r}: member {k} file {file!r} changed since the card was written "
                             "(SHA-256 differs)")
        files.append(file)
    return files, doc.get("card") or {}
