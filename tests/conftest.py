"""tests/ mirrors the package in subfolders (tests/README.md). The shared configuration (TRITON_INTERPRET, markers,
seeding) is the repository root's conftest.py; this one only makes the helper modules importable from any folder.

Test files have no ``__init__.py`` and unique basenames (pytest's default import mode imports them by basename).
tests/ (functional_ref.py, thirdparty_models.py) and each of its subfolders go on sys.path, so that
``from functional_ref import ...`` and the few cross-file imports (``from test_lift import one_thread``,
``from test_susa_ops import module_and_params``) resolve wherever the importing file lives."""
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
for _d in [_TESTS] + sorted(os.path.join(_TESTS, e) for e in os.listdir(_TESTS)):
    if os.path.isdir(_d) and not os.path.basename(_d).startswith((".", "_")) and _d not in sys.path:
        sys.path.append(_d)
