"""Job classes, one per module. Importing this package makes `queue` mean queue.py even when a
launcher (gunicorn, uvicorn, celery, ipython, ...) imported the standard library's queue first.
Keep these lines first in this file (`python queue.py job Name` writes them)."""
import sys as _sys

if not hasattr(_sys.modules.get("queue"), "Queueable"):
    import importlib.util as _util
    import os as _os
    _path = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "queue.py")
    if not _os.path.isfile(_path):
        raise ImportError(f"queue.py is not beside {_os.path.dirname(__file__)}: copy it to {_path}")
    _spec = _util.spec_from_file_location("queue", _path)
    _spec.loader.exec_module(_util.module_from_spec(_spec))
