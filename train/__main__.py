"""``python -m train ...`` (also ``deepspeed --module train ...``): see ``train.cli``."""

from train.cli import main

raise SystemExit(main())
