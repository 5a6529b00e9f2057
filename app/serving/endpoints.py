"""Endpoint contestants: answers from any OpenAI-compatible engine (vLLM, SGLang, TGI, a hospital's own
deployment, a commercial API, ``./launch.sh serve``), streamed into their panels beside the pool's.

Each entry of ``app.endpoints`` (:class:`core.config.EndpointConfig`) is a contestant whose checkpoint id
is ``endpoint:<name>`` (:func:`app.contestants.endpoint_contestants`): it is listed, blinded, leak-checked,
judged and exported like a run's stage. A comparison that includes one is started by
:meth:`app.serving.pool.ModelPool.generate`, which hands each endpoint panel to the arena's
:class:`EndpointClients` (:meth:`EndpointClients.start`):
a thread of its own sends the conversation to the engine's ``/chat/completions`` with the comparison's
decoding (max_tokens, temperature, top_p, seed) through the official ``openai`` client, and writes the
panel's :class:`~app.serving.pool.Answer` as the text streams in, as the pool's threads do for theirs.

- The engine applies the served model's own chat template; ``system_prompt`` goes first in every
  conversation (merged into the conversation's own system message when it has one).
- The API key is read from the environment variable ``api_key_env`` at each request: it is never stored,
  logged or shown, and an error message that happens to contain it has it masked.
- At most ``max_concurrency`` requests are in flight to one endpoint; further panels wait for a slot.
- An answer must be complete within ``timeout_s`` (checked as its pieces arrive; an endpoint that sends
  nothing for ``timeout_s`` times out as well). A refused connection, an HTTP error, a timeout, a malformed
  stream or an empty answer fails that panel only, with a one-line reason (``Answer.error``); the app's log
  names the endpoint.
- Each answer's ``serving`` record says where it came from: ``{"mode": "endpoint", "endpoint": name,
  "model": model, "base_url": URL without user, password or query}`` (plus ``served_model``, the model the
  engine says answered, and ``system_prompt`` when one was set); the store keeps it with the answer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import openai

from app.serving.pool import Generation, clean_answer
from core.config import EndpointConfig, url_without_secrets
from core.errors import UserError

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 200  # a panel's error stays one short line
CONNECT_TIMEOUT_S = 10.0  # a host that does not accept the connection in this time is unreachable


class EndpointError(UserError):
    """Why an endpoint panel failed, in one line without the endpoint's secrets."""


def endpoint_serving(endpoint: EndpointConfig) -> dict:
    """How an endpoint's answers are served, as stored with each of them (no key, no URL secrets)."""
    record = {
        "mode": "endpoint",
        "endpoint": endpoint.name,
        "model": endpoint.model,
        "base_url": url_without_secrets(endpoint.base_url),
    }
    return (
        record
        | ({"system_prompt": endpoint.system_prompt} if endpoint.system_prompt else {})
        | ({"stop": list(endpoint.stop)} if endpoint.stop else {})
    )


def with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    """The conversation as the endpoint receives it: the endpoint's system prompt first."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not system_prompt:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{system_prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


class EndpointClient:
    """One endpoint: its ``openai`` client (its connections kept between requests) and its slots."""

    def __init__(self, endpoint: EndpointConfig) -> None:
        self.endpoint = endpoint
        self.url = url_without_secrets(endpoint.base_url)
        self.slots = threading.BoundedSemaphore(endpoint.max_concurrency)
        # the key is passed as a function: read from the environment at each request, never kept in a config;
        # without one the Authorization header is left out (and OPENAI_API_KEY is never sent to this host)
        keyed = bool(endpoint.api_key_env)
        self.client = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=self._key if keyed else (lambda: ""),
            max_retries=0,
            timeout=openai.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, CONNECT_TIMEOUT_S)),
        )
        self.headers = {} if keyed else {"Authorization": openai.omit}

    def _key(self) -> str:
        key = os.environ.get(self.endpoint.api_key_env, "")
        if not key:
            raise EndpointError(
                f"the API key is missing: set the environment variable {self.endpoint.api_key_env} "
                "before starting the app"
            )
        return key

    def answer(self, generation: Generation, panel: int, messages: list[dict]) -> None:
        """Stream the endpoint's answer to ``messages`` into ``generation``'s panel (runs in its own thread)."""
        generation.update(panel, serving=endpoint_serving(self.endpoint))
        while not self.slots.acquire(timeout=0.2):  # wait for a free slot, unless the comparison is dropped
            if generation.cancelled.is_set():
                generation.update(panel, done=True, latency_s=generation.elapsed())
                return
        try:
            self._stream(generation, panel, messages)
        except Exception as err:  # noqa: BLE001 - whatever went wrong, it fails this panel only
            reason = self.describe(err)
            log.warning(
                "endpoint %s (%s, model %s) failed: %s", self.endpoint.name, self.url, self.endpoint.model, reason
            )
            generation.fail(panel, reason)
        finally:
            self.slots.release()

    def _stream(self, generation: Generation, panel: int, messages: list[dict]) -> None:
        e, decoding = self.endpoint, generation.decoding
        if e.api_key_env:
            self._key()  # a missing key is named before anything is sent
        deadline = time.monotonic() + e.timeout_s
        stream = self.client.chat.completions.create(
            model=e.model,
            messages=with_system_prompt(messages, e.system_prompt),
            stream=True,
            max_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            seed=decoding.seed,
            extra_headers=self.headers,
            stop=list(e.stop) if e.stop else openai.omit,
            stream_options={"include_usage": True},
        )  # the engine's own token count, in a last chunk
        text, pieces, usage, finish = "", 0, None, None
        with stream:
            chunks = iter(stream)
            while not generation.cancelled.is_set():  # (a new conversation started: stop reading)
                try:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    served, choice = chunk.model, (chunk.choices or [None])[0]
                    piece = choice.delta.content if choice is not None and choice.delta is not None else None
                    finish = (choice.finish_reason if choice is not None else None) or finish
                    usage = chunk.usage.completion_tokens if getattr(chunk, "usage", None) is not None else usage
                except (ValueError, AttributeError, TypeError, KeyError) as err:  # not JSON, or not a chunk
                    raise EndpointError(
                        f"malformed stream from the endpoint ({err.__class__.__name__}: {_first_line(err)})"
                    ) from err
                if time.monotonic() > deadline:
                    raise EndpointError(
                        f"no complete answer within {e.timeout_s:g} s (timeout_s): the endpoint is "
                        "too slow or overloaded"
                    )
                if served and generation.answers[panel].serving.get("served_model") != served:
                    generation.update(panel, serving=endpoint_serving(e) | {"served_model": served})
                if not piece:
                    continue
                pieces += 1
                text += piece
                first = (
                    {}
                    if generation.answers[panel].first_token_s is not None
                    else {"first_token_s": generation.elapsed()}
                )
                generation.update(panel, text=clean_answer(text), n_tokens=pieces, **first)
        shown = clean_answer(text)
        if not shown.strip() and not generation.cancelled.is_set():
            raise EndpointError(f"the endpoint sent an empty answer (finish reason: {finish or 'none'})")
        generation.update(
            panel,
            text=shown,
            n_tokens=usage if usage is not None else pieces,
            done=True,
            latency_s=generation.elapsed(),
        )

    def describe(self, err: BaseException) -> str:
        """One line for the panel: what went wrong, never the API key (nor the endpoint's name: it is blind)."""
        timeout = f"{self.endpoint.timeout_s:g} s (timeout_s)"
        if isinstance(err, EndpointError):
            reason = str(err)
        elif isinstance(err, openai.APITimeoutError):
            reason = f"the endpoint did not answer within {timeout}"
        elif isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err.__context__
            reason = f"cannot reach the endpoint ({_first_line(cause) or 'connection error'})"
        elif isinstance(err, openai.APIStatusError):
            reason = f"the endpoint answered HTTP {err.status_code}: {_server_message(err)}"
        elif isinstance(err, openai.APIError):  # an error event inside the stream
            reason = f"the endpoint reported an error: {err.message}"
        else:
            reason = f"{err.__class__.__name__}: {_first_line(err)}"
        key = os.environ.get(self.endpoint.api_key_env, "") if self.endpoint.api_key_env else ""
        if key:
            reason = reason.replace(key, "***")
        reason = " ".join(reason.split())
        return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _first_line(err: BaseException | None) -> str:
    text = str(err or "").strip()
    return text.splitlines()[0] if text else ""


def _server_message(err: openai.APIStatusError) -> str:
    """The server's own message when its error body has one (OpenAI style ``{"error": {"message"}}`` or
    FastAPI's ``{"detail"}``), else the start of the body."""
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or body.get("detail")
        if message:
            return _first_line(message if isinstance(message, str) else json.dumps(message, ensure_ascii=False))
    try:
        return _first_line(err.response.text) or err.response.reason_phrase
    except Exception:  # noqa: BLE001 - a streamed body may not be readable any more
        return err.response.reason_phrase


class EndpointClients:
    """The endpoints' clients, one per endpoint name, made when first used (the arena holds them, so one
    endpoint's ``max_concurrency`` holds across every browser session and API call of the app)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, EndpointClient] = {}

    def client(self, endpoint: EndpointConfig) -> EndpointClient:
        with self._lock:
            client = self._clients.get(endpoint.name)
            if client is None or client.endpoint != endpoint:
                client = self._clients[endpoint.name] = EndpointClient(endpoint)
            return client

    def start(self, endpoint: EndpointConfig, messages: list[dict], generation: Generation, panel: int) -> None:
        """Answer one panel from ``endpoint`` in a thread of its own; returns at once."""
        client = self.client(endpoint)
        threading.Thread(
            target=client.answer, args=(generation, panel, messages), daemon=True, name=f"endpoint:{endpoint.name}"
        ).start()
