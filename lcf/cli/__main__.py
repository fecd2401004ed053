"""``python -m lcf.cli ...`` runs the command line."""
from lcf.cli.app import main

raise SystemExit(main())
