"""HTTP calls from the node to its coordinator: register the volunteer, attach to an account, account and team
actions, fetch swarm manifests.
An unreachable coordinator is retried with exponential backoff, then reported in one clear sentence."""

import logging
import time
from typing import Callable, Optional

import httpx

from node import tls
from protocol.envelope import seal
from protocol.messages import NodeAttach, SwarmManifest, TeamAction, VolunteerRegistration

logger = logging.getLogger(__name__)


class CoordinatorError(RuntimeError):
    """A failure to show the volunteer as it is: one sentence, no traceback. `code`: the API's error code, if any."""

    def __init__(self, message: str, code: Optional[str] = None):
        super().__init__(message)
        self.code = code


class CoordinatorClient:
    def __init__(self, base_url: str, connect_timeout: float = 120.0, on_retry: Optional[Callable[[str], None]] = None,
                 ca_cert: Optional[str] = None):  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.on_retry = on_retry or (lambda message: logger.warning("%s", message))
        try:  # https: the system's and Mozilla's CAs, plus --ca-cert / HEARTH_CA_CERT (node/tls.py)
            verify = tls.client_context(ca_cert) if self.base_url.startswith("https:") else True
        except ValueError as e:
            raise CoordinatorError(str(e)) from None
        self._http = httpx.Client(base_url=self.base_url, timeout=10.0, verify=verify)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        deadline, delay = time.monotonic() + self.connect_timeout, 0.5
        while True:
            try:
                return self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                if (failure := tls.untrusted(e)) is not None:  # retrying cannot help
                    raise CoordinatorError(tls.untrusted_message("coordinator", self.base_url, failure)) from None
                if time.monotonic() + delay > deadline:
                    raise CoordinatorError(
                        f"cannot reach the coordinator at {self.base_url} ({type(e).__name__}); "
                        "check the URL and that the coordinator is running"
                    ) from None
                self.on_retry(f"coordinator at {self.base_url} does not answer; retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    def register(self, registration: VolunteerRegistration, key) -> dict:
        return self._post_signed("/api/v1/volunteers", registration, key, "registration refused")

    def team_action(self, action: TeamAction, key, account_key: Optional[str] = None) -> dict:
        """Create, join or leave a team (signed by the node key, with the account key beside it); the coordinator's
        answer, or CoordinatorError with its reason."""
        return self._post_signed("/api/v1/teams/actions", action, key, f"cannot {action.action} the team", account_key)

    def attach(self, message: NodeAttach, key, attach_key: str) -> dict:
        """Attach this node (signed by its key) to the account of `attach_key` (or an account key)."""
        return self._post_signed("/api/v1/accounts/nodes", message, key, "cannot attach this node", attach_key)

    def account(self, account_key: str) -> dict:
        return self._account_call("GET", "/api/v1/accounts/me", account_key, "cannot read the account")

    def rotate_attach_key(self, account_key: str) -> dict:
        return self._account_call("POST", "/api/v1/accounts/attach-key", account_key, "cannot rotate the attach key")

    def detach(self, account_key: str, node_id: str) -> dict:
        return self._account_call("DELETE", f"/api/v1/accounts/nodes/{node_id}", account_key, "cannot detach the node")

    def rename(self, account_key: str, name: str) -> dict:
        return self._account_call("POST", "/api/v1/accounts/name", account_key, "cannot rename", json={"name": name})

    def export_account(self, account_key: str) -> dict:
        return self._account_call("GET", "/api/v1/accounts/me/export", account_key, "cannot export the account")

    def delete_account(self, account_key: str) -> dict:
        return self._account_call("DELETE", "/api/v1/accounts/me", account_key, "cannot delete the account")

    def _post_signed(self, path: str, message, key, refused: str, bearer: Optional[str] = None) -> dict:
        headers = {"content-type": "application/json", **_authorization(bearer)}
        response = self._request("POST", path, content=seal(message, key), headers=headers)
        if response.status_code not in (200, 201):
            raise CoordinatorError(f"{refused}: {_error_message(response)}", _error_code(response))
        return response.json()

    def _account_call(self, method: str, path: str, bearer: str, refused: str, **kwargs) -> dict:
        response = self._request(method, path, headers=_authorization(bearer), **kwargs)
        if response.status_code not in (200, 201):
            raise CoordinatorError(f"{refused}: {_error_message(response)}")
        return response.json()

    def swarm_ids(self) -> list[str]:
        response = self._request("GET", "/api/v1/swarms")
        if response.status_code != 200:
            raise CoordinatorError(f"cannot list swarms: {_error_message(response)}")
        return [swarm["swarm_id"] for swarm in response.json()["swarms"]]

    def manifest(self, swarm_id: Optional[str]) -> SwarmManifest:
        if swarm_id is None:
            ids = self.swarm_ids()
            if not ids:
                raise CoordinatorError("the coordinator has no swarms to join yet")
            swarm_id = ids[0]
        response = self._request("GET", f"/api/v1/swarms/{swarm_id}")
        if response.status_code != 200:
            raise CoordinatorError(f"cannot fetch swarm {swarm_id!r}: {_error_message(response)}")
        return SwarmManifest.model_validate_json(response.content)


def _authorization(bearer: Optional[str]) -> dict:
    return {"authorization": f"Bearer {bearer}"} if bearer else {}


def _error_code(response: httpx.Response) -> Optional[str]:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
