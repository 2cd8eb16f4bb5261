"""Owns the connection to Ray: the cluster's address, whether it answers (a TCP connect and a probe of
its GCS, token authentication included), connecting, and checking a study's resources against the
cluster's nodes before the study writes anything.

The GCS probe and the token settings use `ray._raylet` (InnerGcsClient, AuthenticationTokenLoader,
Config): Ray has no public call that asks a GCS whether it answers within seconds (ray.init retries
for minutes) nor one that re-reads the token settings, so those private names stay here, in this
module only.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import ray
from ray._raylet import AuthenticationTokenLoader, Config, InnerGcsClient  # the token and GCS probes (docstring)

from dse.config import parse_address
from dse.errors import DseError
from dse.executor.resources import node_shape, plan_resources
from dse.trial import TrialSpec

PROBE_TIMEOUT_S = 5.0  # a cluster that does not answer within this is reported, not waited for
TOKEN_FILE = Path("~") / ".ray" / "auth_token"  # where `ray start` and ray.init keep a node's token
TOKEN_HELP = ("on this machine set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>, "
              "or put the token in ~/.ray/auth_token); `ray get-auth-token` on the head node prints the token")


def _client_token() -> tuple[str, str]:
    """(token, where it came from) as Ray reads it on this machine: $RAY_AUTH_TOKEN, else the file
    $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; ("", "") when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    try:
        return path.read_text().strip(), str(path)
    except OSError:
        return "", ""


def _probe_gcs(address: str) -> str:
    """Ask the cluster's GCS for its id as ray.init would (with this process's token settings), its
    C++ log lines kept off the terminal: "ok", "unauthenticated", or why it did not answer."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        InnerGcsClient.standalone(address, None, int(PROBE_TIMEOUT_S * 1000 / 4))  # it tries about 4 times
    except ray.exceptions.AuthenticationError:
        return "unauthenticated"
    except Exception as exc:  # noqa: BLE001 - any other failure means: not a Ray cluster that answers
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return "ok"


def _enable_token_mode() -> None:
    """Present this machine's token to the cluster, as Ray itself does for a local cluster."""
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray caches its settings and the token: let both see the token mode
    AuthenticationTokenLoader.instance().reset_cache()


def check_reachable(address: str) -> None:
    """A DseError within seconds unless the cluster at `address` answers: a TCP connect, then (for a
    HOST:PORT address) its GCS, which also says whether it wants a token. When it does and this
    machine has one (`_client_token`) but RAY_AUTH_MODE is unset, token mode is turned on here;
    without a token, or with one it refuses, the error says what to set."""
    parsed = parse_address(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DseError(f"cannot reach the Ray cluster at {address} ({why}): is `ray start --head --port {port}` "
                       f"running on {host}, and is the port open from here? Or run without --address for a "
                       "local Ray") from None
    if scheme:  # Ray Client speaks its own protocol; ray.init reports its failures
        return
    answer = _probe_gcs(f"{host}:{port}")
    token, source = _client_token()
    if answer == "unauthenticated" and "RAY_AUTH_MODE" not in os.environ and token:
        _enable_token_mode()
        answer = _probe_gcs(f"{host}:{port}")
    if answer == "unauthenticated":
        if not token:
            raise DseError(f"the Ray cluster at {address} uses token authentication and this machine has no token: "
                           f"{TOKEN_HELP}")
        raise DseError(f"the Ray cluster at {address} refuses this machine's token (from {source}, RAY_AUTH_MODE="
                       f"{os.environ.get('RAY_AUTH_MODE', '')}): {TOKEN_HELP}")
    if answer != "ok":
        raise DseError(f"cannot reach the Ray cluster at {address}: it does not answer as one ({answer}); give the "
                       "head's GCS port (`ray start --head --port`, 6379 by default)")


def connect(address: str = "") -> None:
    """Connect this process to Ray unless it already is: the cluster at `address` (or $RAY_ADDRESS),
    checked first by `check_reachable`, else a local Ray started here."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise DseError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None


def prepare_cluster(specs: list[TrialSpec], *, cpus_per_trial: float, gpus_per_trial: float,
                    address: str = "") -> dict[str, tuple[float, float]]:
    """Connect to Ray (`connect`) and plan each spec's (CPUs, GPUs) against its nodes (`plan_resources`);
    a DseError for an unreachable cluster or a request no node can meet. Called before a study
    writes anything; pass the result to `run_trials`."""
    connect(address)
    node_cpus, node_gpus = node_shape()
    most_cpus = max([n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [node_cpus])
    if cpus_per_trial > most_cpus:
        raise DseError(f"cpus_per_trial {cpus_per_trial:g} but no Ray node has more than {most_cpus:g} CPUs; "
                       f"use --cpus-per-trial {most_cpus:g} or less (0: every CPU of a node)")
    return plan_resources(specs, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          node_cpus=node_cpus, node_gpus=node_gpus)
