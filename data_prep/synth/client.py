"""A small client for OpenAI-compatible servers (vLLM, TGI, snowtrain serve, hosted APIs), on the
standard library only.

One POST per request to `{base_url}/chat/completions` or `{base_url}/completions`;
`served_models` reads `{base_url}/models` once before (finding a missing `/v1`). Connection
errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter (a Retry-After
header is honoured); any other 4xx is final, and its error carries the server's message. The
API key is read from an environment variable at start and lives only in request headers.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

RETRY_STATUS = frozenset({408, 425, 429})   # besides every 5xx


class EndpointError(RuntimeError):
    """The endpoint cannot be used at all (not reachable)."""


class EndpointAuthError(EndpointError):
    """The server refused the API key (HTTP 401 or 403)."""


@dataclass
class Reply:
    """One request's outcome: the text and finish reason, or an error after `attempts` tries."""
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None        # None: the server answered
    status: int | None = None       # HTTP status of the last attempt (None: no HTTP answer)
    attempts: int = 0
    cancelled: bool = False         # stopped between retries: not an answer, not a final error


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class _Final(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _get_models(url: str, headers: dict, timeout_s: float) -> list[str] | None:
    """The model ids a GET of `url` lists (OpenAI's {"data": [{"id": ...}]}); None: no such list."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
            data = json.loads(r.read())
        return [str(m["id"]) for m in data["data"]]
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise EndpointAuthError(f"HTTP {e.code} from {url}: {_server_message(e.read() or b'')}") from None
        return None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise EndpointError(f"cannot list the models at {url} "
                            f"({getattr(e, 'reason', None) or e})") from None
    except (ValueError, KeyError, TypeError):
        return None


def served_models(base_url: str, api_key: str | None = None,
                  timeout_s: float = 30.0) -> tuple[str, list[str] | None]:
    """(root, models): the OpenAI-compatible root, which is `base_url`, or `base_url` + '/v1'
    when the URL was given without its /v1 and only that answers GET .../models; and the ids
    of the models served there (None: the server lists none; its requests will tell).
    EndpointError when the server cannot be reached, EndpointAuthError when it refuses the key."""
    base = base_url.rstrip("/")
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    names = _get_models(f"{base}/models", headers, timeout_s)
    if names is None and not base.endswith("/v1"):
        names = _get_models(f"{base}/v1/models", headers, timeout_s)
        if names is not None:
            return f"{base}/v1", names
    return base, names


def _server_message(body: bytes) -> str:
    """The error message of an OpenAI-style error body, else the body's start."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if data.get("detail"):
            return str(data["detail"])[:300]
    return text[:300]


class Endpoint:
    """Sends completion requests with retries; safe to share between threads."""

    def __init__(self, base_url: str, api: str = "chat", *, api_key: str | None = None,
                 timeout_s: float = 600.0, retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0):
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.url = f"{self.base_url}/{'chat/completions' if api == 'chat' else 'completions'}"
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._jitter = random.Random()   # timing only: results never depend on it

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Opens (and closes) a TCP connection to the server, so that a server that is not
        running is one clear error instead of every request failing after its retries."""
        u = urllib.parse.urlsplit(self.base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise EndpointError(f"{self.base_url} is not an http(s) URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            socket.create_connection((u.hostname, port), timeout=timeout_s).close()
        except OSError as e:
            raise EndpointError(f"cannot connect to {self.base_url} ({e.strerror or e})") from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        return cap * (0.5 + 0.5 * self._jitter.random())

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            msg = f"HTTP {e.code} from {self.url}: {_server_message(e.read() or b'')}"
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retryable(msg, e.code, _retry_after(e.headers.get("Retry-After"))) from None
            raise _Final(msg, e.code) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Retryable(f"{type(reason).__name__} at {self.url}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise _Final(f"not JSON from {self.url}: {body[:200]!r}", 200) from None

    def _reply(self, data: dict) -> Reply:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise _Final(f"no choices[0] answer in the response from {self.url}: "
                         f"{json.dumps(data)[:200]}", 200) from None
        usage = data.get("usage") or {}
        return Reply(text=text or "", finish_reason=choice.get("finish_reason"),
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0), status=200)

    def request(self, payload: dict, cancel: threading.Event | None = None) -> Reply:
        """Sends one request, retrying as described above; never raises for a failed request."""
        attempt = 0
        while True:
            if cancel is not None and cancel.is_set():
                return Reply(error="cancelled", attempts=attempt, cancelled=True)
            attempt += 1
            try:
                reply = self._reply(self._post(payload))
                reply.attempts = attempt
                return reply
            except _Final as e:
                return Reply(error=str(e), status=e.status, attempts=attempt)
            except _Retryable as e:
                if attempt > self.retries:
                    return Reply(error=f"{e} (after {attempt} attempts)", status=e.status,
                                 attempts=attempt)
                delay = self._delay(attempt - 1, e.retry_after)
            if cancel is not None:
                if cancel.wait(delay):
                    return Reply(error="cancelled", attempts=attempt, cancelled=True)
            else:
                time.sleep(delay)
