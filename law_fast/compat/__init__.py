"""Drop-in backend for MEMIT-family code (kmeng01/memit, the LaW authors' fork, EasyEdit): their entry
points, request dicts, hyper-parameter files and covariance statistics files (docs/dropin.md)."""

from .apply import apply_alphaedit_to_model, apply_law_to_model, apply_memit_to_model, client_stats
from .hparams import ClientHparams, HparamsError, check_modules, read_hparams
from .requests import Request, RequestError, read_requests
from .stats import (
    client_model_name,
    client_stats_path,
    export_client_stats,
    read_client_stats,
    stats_from_files,
    write_client_stats,
)

__all__ = [
    "ClientHparams",
    "HparamsError",
    "Request",
    "RequestError",
    "apply_alphaedit_to_model",
    "apply_law_to_model",
    "apply_memit_to_model",
    "check_modules",
    "client_model_name",
    "client_stats",
    "client_stats_path",
    "export_client_stats",
    "read_client_stats",
    "read_hparams",
    "read_requests",
    "stats_from_files",
    "write_client_stats",
]
