"""``python -m sous_client``: the ``sous-client`` command."""

from sous_client.cli import main

raise SystemExit(main())
