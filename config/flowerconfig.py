"""Flower's configuration: ``celery -A tasks flower --conf=config/flowerconfig.py``.

Flower executes this file and reads the names below. Flower shows task arguments;
Celeriac's are step ids only, never secrets. It is unauthenticated unless told
otherwise, so outside dev mode it refuses to start without basic auth
(``FLOWER_BASIC_AUTH=user:password``, read by Flower itself). It binds to
localhost unless ``CELERIAC_FLOWER_ADDRESS`` says otherwise. For history that
survives restarts, set ``CELERIAC_FLOWER_PERSISTENT=1`` (state in
``CELERIAC_FLOWER_DB``, default var/flower.db).
"""

import os

_DEV_MODE = os.environ.get("CELERIAC_DEV_MODE", "1").lower() not in ("0", "false", "no")
if not _DEV_MODE and not os.environ.get("FLOWER_BASIC_AUTH"):
    raise SystemExit(
        "Flower: set FLOWER_BASIC_AUTH=user:password (required outside dev mode, "
        "CELERIAC_DEV_MODE=0)"
    )

address = os.environ.get("CELERIAC_FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("CELERIAC_FLOWER_PORT", "5555"))
persistent = os.environ.get("CELERIAC_FLOWER_PERSISTENT", "0") == "1"
db = os.environ.get("CELERIAC_FLOWER_DB", "var/flower.db")
state_save_interval = 60_000
purge_offline_workers = 600
