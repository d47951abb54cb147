"""``python -m pyengine.bench``: the same as ``pyengine bench``."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
