"""``python -m law_fast`` = the ``law-fast`` command (also under ``torchrun -m law_fast``)."""

from .cli import main

raise SystemExit(main())
