"""``python -m law_fast`` = the ``law-fast`` command (also under ``torchrun -m law_fast``)."""

import logging

from .cli import main

log = logging.getLogger(__name__)

if __name__ == "__main__":
    raise SystemExit(main())
