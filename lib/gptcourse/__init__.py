"""gptcourse: build a GPT-style transformer from scratch, one floor at a time."""

import sys

__version__ = "0.1.0"

# jsonschema, which nbformat uses, loads the optional IRI checker `rfc3987_syntax` when it
# is installed, and that module spends over a second building a grammar at import. No
# notebook field is an IRI, so every course command (check, release, grade) and every
# grading process starts that much sooner without it.
sys.modules.setdefault("rfc3987_syntax", None)
