"""A run as an OpenAI-compatible server: ``./launch.sh serve --run ID [--host HOST --port PORT]``.

Every stage of the run is a model named by its checkpoint id (``"<run_id>/<stage>"``, as in the arena),
behind ``GET /v1/models`` (each with vLLM's ``max_model_len``), ``POST /v1/chat/completions`` (streamed as
server-sent events or not) and ``POST /v1/completions`` (text continued as given, ``echo``, ``logprobs``: the
model's own log-softmax, from a forward pass in its worker process), so any OpenAI client (the ``openai``
library, lm-eval's ``local-chat-completions`` and ``local-completions``, OpenCompass, curl) can evaluate the
run's checkpoints; ``GET /health`` is 200 once every stage can answer, 503 before (docs/serving-fields.md):

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="TOKEN or anything without accounts")
    client.chat.completions.create(model="RUN/sft", messages=[{"role": "user", "content": "..."}], seed=1)

Answers come from the arena's model pool (:class:`~app.serving.pool.ModelPool`) with the arena's prompt
(each chat stage's template, base and cpt the plain 问：/答： text) and decoding: ``max_tokens``,
``temperature``, ``top_p`` and ``seed`` map onto :class:`~app.serving.sampling.Decoding`, ``app.decoding``
fills what a request leaves out and bounds what it asks, so a request and an arena panel with the same
settings and seed get the same answer. ``stop`` sequences are honoured (the answer ends before the first
one; ``completion_tokens`` counts the tokens up to and including it). A chat request may also ask for ``n``
choices (choice i sampled with seed + i), ``logprobs`` / ``top_logprobs`` (the worker's scoring of the
generated ids, as ``/v1/completions``), vLLM's ``top_k``, ``min_p`` and ``repetition_penalty`` (the pool's
sampler) and ``chat_template_kwargs`` (a chat stage's template variables). What the pool cannot do (tools,
frequency/presence penalties, logit bias, JSON mode; streaming several choices or logprobs) is refused, never
ignored.

The server answers only what it read whole: a conversation whose prompt plus ``max_tokens`` does not fit the
model's context is refused with 400 ``context_length_exceeded`` and the numbers, as vLLM refuses it. With
``app.trim_history`` (or ``"trim_history": true`` in the body) its oldest turns are left out instead, and the
response says which: ``dropped_messages`` (their indices in ``messages``) in the body (a stream's first
chunk) and their count in the ``X-ChiMed-Dropped-Messages`` header.

The arena's rules hold here too:

- every response carries the research-only notice in headers (values must be ASCII): ``X-ChiMed-Notice``
  is the English notice as is, ``X-ChiMed-Notice-Zh`` the Chinese one percent-encoded (UTF-8);
- with annotator accounts in the store every request needs ``Authorization: Bearer TOKEN`` (one token per
  annotator: ``./launch.sh serve-token NAME``); without accounts it runs as the local "demo" annotator.
  Each answer is logged with its annotator; nothing is stored (this server records no comparisons or
  judgments);
- every message, whatever its role, is held to ``app.max_prompt_chars`` (a user message must not be
  empty either), and the user and system messages are screened for patient identifiers
  (:mod:`app.identifiers`): with any found nothing is sent, unless the request asks for the redacted text
  (``"redact": true`` in the body, the arena's "redact and send").

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request,
401 without a valid token, 404 for an unknown model, 500 when the model fails (in a stream that has
started: an ``error`` event, then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from tokenizers import decoders
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.arena import Arena, resolve_decoding
from app.auth import ADD_ACCOUNT_HINT, client_address
from app.contestants import Contestant, completed_runs, resolve_contestants, run_checkpoints
from app.identifiers import IdentifiersFound, as_sent, warm_up
from app.notice import NOTICE_EN, NOTICE_ZH
from app.serving.model_process import describe_error
from app.serving.pool import Answer, ContextLengthExceeded, Generation, ModelPool, PanelRequest, Prompt
from app.serving.sampling import EXTRAS, Decoding
from core.config import Config
from core.errors import UserError
from core.registry import is_chat_stage
from preference_store.records import Annotator
from preference_store.repository import PreferenceStore
from preference_store.repository.audit import TOKEN_FAILED
from training.evaluation.loglik import token_ids

NOTICE_HEADERS = {"X-ChiMed-Notice": NOTICE_EN, "X-ChiMed-Notice-Zh": quote(NOTICE_ZH)}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_SEQUENCES = 4  # as OpenAI's API
# request fields this server honours (``redact`` and ``trim_history`` are its own: send the redacted text,
# leave the oldest turns out to fit the context), and fields that carry no instruction about the answer
# (accepted, not used)
HONOURED = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "redact",
    "trim_history",
    "n",
    "logprobs",
    "top_logprobs",
    *EXTRAS,  # vLLM's top_k, min_p and repetition_penalty (OpenAI clients send them through extra_body)
    "chat_template_kwargs",
}
NOT_INSTRUCTIONS = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "safety_identifier",
    "prompt_cache_key",
}
# OpenAI's fields the pool cannot honour, with the values that ask for nothing (anything else is refused)
DEFAULT_ONLY = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
}
DECODING_FIELDS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
}


class ApiError(Exception):
    """A request refused with an HTTP status and OpenAI's error object."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def error_response(err: ApiError) -> JSONResponse:
    headers = dict(NOTICE_HEADERS)
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class NoticeHeaders:
    """ASGI middleware: the research-only notice headers on every HTTP response (streams included)."""

    def __init__(self, app) -> None:
        self.app = app
        self.raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in NOTICE_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_notice(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = message | {"headers": headers + [h for h in self.raw if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, send_with_notice)


# --- the request ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completion request: what the pool answers and how the answer is returned."""

    contestant: Contestant
    messages: list[dict]
    decoding: Decoding
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    trim: bool  # leave the oldest turns out when the conversation does not fit (app.trim_history by default)
    n: int = 1  # choices, choice i sampled with decoding.for_choice(i)
    top_logprobs: int | None = None  # logprobs asked: the alternatives per token (None: no logprobs)
    template_kwargs: dict = field(default_factory=dict)  # chat_template_kwargs


def parse_chat_request(arena: Arena, run_id: str, body: dict) -> ChatRequest:
    """``body`` checked against what this server can honour (:class:`ApiError` 400/404 otherwise), its
    messages held to the arena's limits and screened, its decoding resolved with ``app.decoding``."""
    cfg = arena.cfg
    check_fields(body, HONOURED, DEFAULT_ONLY)
    contestant = _contestant(cfg, run_id, body.get("model"))
    messages = _messages(arena, body.get("messages"), _flag(body, "redact"))
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or (options and not stream):
        raise ApiError(400, "stream_options is an object, and only for stream=true", param="stream_options")
    trim = cfg.app.trim_history if body.get("trim_history") is None else _flag(body, "trim_history")
    n, top_logprobs = _choices(cfg, body, stream)
    return ChatRequest(
        contestant,
        messages,
        _decoding(cfg, body),
        stream,
        bool(options.get("include_usage")),
        _stop(body.get("stop")),
        trim,
        n,
        top_logprobs,
        _template_kwargs(cfg, contestant, body.get("chat_template_kwargs")),
    )


def _choices(cfg: Config, body: dict, stream: bool) -> tuple[int, int | None]:
    """``n`` (1 to ``app.max_n``) and, with ``logprobs: true``, ``top_logprobs`` (0 to ``app.max_logprobs``);
    neither more than one choice nor logprobs are streamed."""
    n, most = body.get("n"), cfg.app.max_n
    if n is None:
        n = 1
    elif isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        raise ApiError(400, f"n must be an integer 1-{most} (app.max_n), got {n!r}", param="n")
    logprobs, top = _flag(body, "logprobs"), body.get("top_logprobs")
    most = cfg.app.max_logprobs
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= most):
        raise ApiError(
            400, f"top_logprobs must be an integer 0-{most} (app.max_logprobs), got {top!r}", param="top_logprobs"
        )
    if top and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if stream and (n > 1 or logprobs):
        name = "n" if n > 1 else "logprobs"
        raise ApiError(
            400,
            f"{name} is not streamed by this server: ask for several choices or logprobs with stream=false",
            param=name,
            code="unsupported_parameter",
        )
    return n, (top or 0) if logprobs else None


# apply_chat_template's own arguments (and the template's conversation): not variables a request may set
TEMPLATE_ARGUMENTS = frozenset(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters) | {"messages"}


def _template_kwargs(cfg: Config, contestant: Contestant, kwargs) -> dict:
    """``chat_template_kwargs``: variables for the stage's chat template; refused for a stage without one."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ApiError(
            400, "chat_template_kwargs must be an object of template variables", param="chat_template_kwargs"
        )
    if not is_chat_stage(contestant.stage):
        raise ApiError(
            400,
            f"chat_template_kwargs: {contestant.checkpoint_id} is a plain stage, prompted with 问：/答： turns and "
            "no chat template: leave it out",
            param="chat_template_kwargs",
            code="unsupported_parameter",
        )
    taken = sorted(TEMPLATE_ARGUMENTS & set(kwargs))
    if taken:
        raise ApiError(
            400,
            f"chat_template_kwargs: {', '.join(taken)} cannot be set (the server's own arguments of the template)",
            param="chat_template_kwargs",
        )
    return kwargs


def check_fields(body: dict, honoured: set[str], default_only: dict[str, tuple]) -> None:
    """Every field of ``body`` is one the endpoint honours, carries no instruction (``NOT_INSTRUCTIONS``), or
    is one of ``default_only`` with a value that asks for nothing; anything else is a 400 naming it."""
    for name, value in body.items():
        if name in honoured or name in NOT_INSTRUCTIONS or value is None:
            continue
        if name in default_only:
            if value not in default_only[name]:
                raise ApiError(
                    400,
                    f"{name}={json.dumps(value, ensure_ascii=False)[:80]} is not supported by this "
                    "server (plain text, no tools, penalties or logit bias; docs/serving-fields.md lists "
                    "what it honours): leave it out",
                    param=name,
                    code="unsupported_parameter",
                )
            continue
        raise ApiError(400, f"unrecognized request argument supplied: {name}", param=name, code="unrecognized_argument")


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false", param=name)
    return bool(value)


def _contestant(cfg: Config, run_id: str, model) -> Contestant:
    served = run_checkpoints(cfg, run_id)
    if not isinstance(model, str) or model not in served:
        raise ApiError(
            404,
            f"the model {model!r} does not exist here: this server serves run {run_id!r}, "
            f"models {', '.join(served) or 'none (the run is gone)'}",
            param="model",
            code="model_not_found",
        )
    return resolve_contestants(cfg, [model])[0]


def _messages(arena: Arena, messages, redact: bool) -> list[dict]:
    """The conversation as the arena sends it to the pool: every message held to ``app.max_prompt_chars``
    whatever its role, user messages checked like a typed prompt (not empty, stripped), user and system
    messages screened for identifiers."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "messages must be a non-empty list of {role, content} ending with a user message", param="messages"
        )
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise ApiError(
                400,
                f"{where}.role {role!r} is not supported: use system, user or assistant (this server has no tools)",
                param=f"{where}.role",
            )
        role, content = ROLES[message["role"]], _text(message.get("content"), f"{where}.content")
        if role == "user" or len(content) > arena.cfg.app.max_prompt_chars:  # (a long system prompt too)
            try:
                content = arena.check_prompt(content)
            except UserError as err:
                raise ApiError(
                    400,
                    f"{where}: {err}",
                    param=f"{where}.content",
                    code="prompt_too_long" if content.strip() else "empty_prompt",
                ) from None
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(
            400,
            f"the last message is from {out[-1]['role']!r}: the conversation must end with the "
            "user's message (the one to answer)",
            param=f"messages[{len(out) - 1}].role",
        )
    typed = {str(i): m["content"] for i, m in enumerate(out) if m["role"] in ("user", "system")}
    try:
        sent, _ = as_sent(redact, **typed)
    except IdentifiersFound as err:
        raise ApiError(400, f"{err}", param="messages", code="identifiers_found") from None
    return [m | {"content": sent[str(i)]} if str(i) in sent else m for i, m in enumerate(out)]


def _text(content, where: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ApiError(
        400, f"{where} must be text (a string or a list of text parts): the models read text only", param=where
    )


def _decoding(cfg: Config, body: dict) -> Decoding:
    given = {}
    for name, setting in DECODING_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"{name} must be a number, got {value!r}", param=name)
        if setting in given and given[setting][1] != value:
            raise ApiError(400, "max_tokens and max_completion_tokens differ: give one", param=name)
        given[setting] = (name, value)
    settings = {setting: value for setting, (_, value) in given.items()}
    try:
        decoding = resolve_decoding(cfg.app.decoding, **settings)
    except UserError as err:  # name the field at fault
        for setting, (name, value) in given.items():
            try:
                resolve_decoding(cfg.app.decoding, **{setting: value})
            except UserError:
                raise ApiError(400, str(err) if str(err).startswith(name) else f"{name}: {err}", param=name) from None
        raise ApiError(400, str(err)) from None
    extras = {name: body[name] for name in EXTRAS if body.get(name) is not None}
    for name, value in extras.items():  # (each checked alone first, to name the field at fault)
        try:
            Decoding(**(decoding.settings() | {name: value}), limits=cfg.app.decoding)
        except UserError as err:
            raise ApiError(400, str(err), param=name) from None
    return Decoding(**(decoding.settings() | extras), limits=cfg.app.decoding) if extras else decoding


def _stop(stop) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > MAX_STOP_SEQUENCES
    ):
        raise ApiError(
            400, f"stop must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them", param="stop"
        )
    return tuple(stops)


# --- /v1/completions: the request -------------------------------------------------------------------------

# what /v1/completions honours beside NOT_INSTRUCTIONS, and the fields it takes only with values asking nothing
COMPLETION_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "echo",
    "logprobs",
    "redact",
}
COMPLETION_DEFAULT_ONLY = {
    "stream": (False,),
    "n": (1,),
    "best_of": (1,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "suffix": ("",),
}


@dataclass(frozen=True)
class CompletionRequest:
    """A checked text completion request: each prompt continued (or with ``max_tokens`` 0 only echoed and
    scored) by one model, as vLLM's ``/v1/completions`` does."""

    contestant: Contestant
    prompts: list  # each a string or a list of token ids, as given
    decoding: Decoding  # its max_new_tokens is max_tokens, unless that is 0
    max_tokens: int  # 0: nothing generated (only with echo)
    echo: bool
    logprobs: int | None  # the alternatives per token (None: no logprobs)
    stop: tuple[str, ...]
    redact: bool


def parse_completion_request(cfg: Config, run_id: str, body: dict) -> CompletionRequest:
    """``body`` checked like a chat request's (:func:`check_fields`, the same decoding and stop rules)."""
    check_fields(body, COMPLETION_FIELDS, COMPLETION_DEFAULT_ONLY)
    contestant = _contestant(cfg, run_id, body.get("model"))
    echo = _flag(body, "echo")
    max_tokens = body.get("max_tokens")
    scored_only = max_tokens == 0 and not isinstance(max_tokens, bool)
    if scored_only and not echo:
        raise ApiError(
            400,
            "max_tokens=0 generates nothing: it needs echo=true (the prompt returned, scored with logprobs)",
            param="max_tokens",
        )
    decoding = _decoding(cfg, {k: v for k, v in body.items() if not (scored_only and k == "max_tokens")})
    logprobs, most = body.get("logprobs"), cfg.app.max_logprobs
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= most
    ):
        raise ApiError(
            400,
            f"logprobs must be an integer 0-{most} (app.max_logprobs): how many of the most likely tokens to give "
            "beside each token's own log-probability",
            param="logprobs",
        )
    return CompletionRequest(
        contestant,
        _prompts(body.get("prompt")),
        decoding,
        0 if scored_only else decoding.max_new_tokens,
        echo,
        logprobs,
        _stop(body.get("stop")),
        _flag(body, "redact"),
    )


def _prompts(prompt) -> list:
    """The prompts of a completion request: a string, a list of strings, token ids, or a list of lists of ids."""

    def ids(value) -> bool:
        return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)

    if isinstance(prompt, str) or (ids(prompt) and prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids(p) for p in prompt):
        prompts = prompt
    else:
        raise ApiError(
            400,
            "prompt must be a string, a list of strings, token ids (a list of integers) or a list of lists of token ids",
            param="prompt",
        )
    for i, given in enumerate(prompts):
        if not given:
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise ApiError(400, f"{where} is empty: give the text (or token ids) to continue", param="prompt")
    return prompts


def completion_prompt(arena: Arena, tokenizer, request: CompletionRequest, i: int) -> tuple[str, list[int]]:
    """Prompt ``i``'s text (as echoed) and token ids, checked as the chat's messages are: held to
    ``app.max_prompt_chars`` and screened for identifiers (redacted with ``redact``; token ids are decoded to be
    screened, and the redacted text encoded again). It is never stripped: its text is continued as given."""
    given = request.prompts[i]
    where = "prompt" if len(request.prompts) == 1 else f"prompt[{i}]"
    if isinstance(given, str):
        text, ids = given, token_ids(tokenizer, given)
    else:
        vocabulary = len(tokenizer)
        bad = next((t for t in given if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise ApiError(
                400, f"{where}: token id {bad} is not in the model's vocabulary (0-{vocabulary - 1})", param="prompt"
            )
        text, ids = tokenizer.decode(given), list(given)
    try:
        arena.check_prompt(text)  # (only checked: the text is sent as given)
    except UserError as err:
        code = "prompt_too_long" if text.strip() else "empty_prompt"
        raise ApiError(400, f"{where}: {err}", param="prompt", code=code) from None
    try:
        sent, _ = as_sent(request.redact, prompt=text)
    except IdentifiersFound as err:
        raise ApiError(400, f"{where}: {err}", param="prompt", code="identifiers_found") from None
    if sent["prompt"] != text:
        text, ids = sent["prompt"], token_ids(tokenizer, sent["prompt"])
    return text, ids


def completion_logprobs(tokenizer, ids: list[int], start: int, scored: tuple) -> dict:
    """OpenAI's (and vLLM's) ``logprobs`` of a completion choice for tokens ``ids[start:]``: each token as the
    tokenizer decodes it alone, its log-probability after the tokens before it (None for the very first token,
    which nothing predicts), the most likely tokens there with theirs ({token: logprob}, the token itself
    first), and where each token starts in the choice's text (the lengths of the tokens before it)."""
    logprobs, top_ids, top_logprobs = scored
    tokens, token_logprobs, tops, offsets, offset = [], [], [], [], 0
    for i in range(start, len(ids)):
        token = tokenizer.decode([ids[i]])
        tokens.append(token)
        offsets.append(offset)
        offset += len(token)
        if i == 0:
            token_logprobs.append(None)
            tops.append(None)
            continue
        top = {token: logprobs[i - 1]}
        for other, value in zip(top_ids[i - 1], top_logprobs[i - 1]):
            top.setdefault(tokenizer.decode([other]), value)
        token_logprobs.append(logprobs[i - 1])
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer, ids: list[int], start: int, scored: tuple) -> list[dict]:
    """OpenAI's ``logprobs.content`` of a chat choice for the generated tokens ``ids[start:]`` (``start`` > 0:
    the prompt comes first): each token as the tokenizer decodes it alone, its UTF-8 bytes, its
    log-probability after the tokens before it, and the most likely tokens there with theirs, best first."""
    logprobs, top_ids, top_logprobs = scored

    def entry(token_id: int, logprob: float) -> dict:
        token = tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": token_bytes(tokenizer, token_id, token)}

    return [
        entry(ids[i], logprobs[i - 1])
        | {"top_logprobs": [entry(t, v) for t, v in zip(top_ids[i - 1], top_logprobs[i - 1])]}
        for i in range(start, len(ids))
    ]


BYTE_OF_SYMBOL = {symbol: byte for byte, symbol in bytes_to_unicode().items()}  # byte-level BPE's alphabet


def token_bytes(tokenizer, token_id: int, text: str) -> list[int]:
    """A token's own bytes (OpenAI's ``bytes``): with a byte-level BPE tokenizer (GPT-2's, Qwen's, LLaMA-3's,
    every model trained here) the bytes its symbols stand for, so a token holding part of a character gives
    that part; otherwise the UTF-8 of ``text``, the token decoded alone."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    symbols = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(getattr(backend, "decoder", None), decoders.ByteLevel) and all(c in BYTE_OF_SYMBOL for c in symbols):
        return [BYTE_OF_SYMBOL[c] for c in symbols]
    return list(text.encode("utf-8"))


# --- the answer ------------------------------------------------------------------------------------------


class AnswerText:
    """What the client is given of a growing answer: while it grows, only the part that can no longer change
    (streamed pieces then add up to the final text). The pool ends the answer at a stop sequence.

    The pool's text of a plain stage (base, cpt) is cut where the model runs on into an invented next turn
    (a line starting 问： or 答：): its last line is held back until the next one starts. A tail that could be
    the start of a stop sequence is held back too."""

    def __init__(self, chat: bool, stop: tuple[str, ...]) -> None:
        self.chat, self.stop = chat, stop
        self.text = ""  # what the client has been given

    def advance(self, text: str, done: bool) -> str:
        """The new piece for the client, given the pool's text so far."""
        if not done:
            text = self._settled(text)
        if not text.startswith(self.text):  # (the held-back parts are what the pool can still change)
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece

    def _settled(self, text: str) -> str:
        if not text.strip():  # an answer of blanks only is returned as ""
            return ""
        if not self.chat:
            text = text[: text.rfind("\n")] if "\n" in text else ""
        held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[: len(text) - held]


@dataclass(frozen=True)
class Piece:
    """One step of an answer for the client: new text, the end (with the final answer), or the failure."""

    text: str = ""
    end: Answer | None = None
    finish_reason: str | None = None
    error: str | None = None


async def answer_snapshots(generation: Generation) -> AsyncIterator[Answer]:
    """The request's answer each time it changes, without blocking the event loop: a thread follows the
    generation (:meth:`Generation.stream` blocks) and hands the newest snapshot over."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def follow() -> None:
        try:
            for answers in generation.stream():
                loop.call_soon_threadsafe(queue.put_nowait, answers[0])
        except RuntimeError:  # the event loop is closed: the server is stopping
            generation.cancel()

    threading.Thread(target=follow, daemon=True, name="serve:follow").start()
    while True:
        answer = await queue.get()
        while not queue.empty():  # only the newest counts
            answer = queue.get_nowait()
        yield answer
        if answer.done:
            return


async def answer_pieces(generation: Generation, shaper: AnswerText) -> AsyncIterator[Piece]:
    """The answer as pieces for the client. The generation is cancelled when the client goes away."""
    try:
        async for answer in answer_snapshots(generation):
            if answer.error is not None:
                yield Piece(error=answer.error)
                return
            piece = shaper.advance(answer.text, answer.done)
            if piece:
                yield Piece(text=piece)
            if answer.done:
                yield Piece(end=answer, finish_reason=answer.finish_reason or "stop")
                return
    finally:
        if not generation.done:
            generation.cancel()


# --- the server ------------------------------------------------------------------------------------------


def build_server(cfg: Config, run_id: str, store: PreferenceStore, pool: ModelPool) -> FastAPI:
    """The FastAPI app serving run ``run_id``'s stages from ``pool``; callers are checked against ``store``."""
    app = FastAPI(title="ChiMed Arena · OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(NoticeHeaders)
    arena = Arena(cfg, store, pool)  # its checks of a prompt; nothing is recorded

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(
            ApiError(
                err.status_code,
                f"{request.method} {request.url.path}: {err.detail}",
                code="not_found" if err.status_code == 404 else None,
            )
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {err.__class__.__name__}: {err}"))

    def who(authorization: str | None, address: str | None = None) -> Annotator:
        """The caller: the annotator whose token this is; the demo annotator when the store has no accounts.
        An address that sent too many invalid tokens is refused unchecked for a while (429; each invalid token
        is an audit row, from which the throttle counts: preference_store.repository.audit)."""
        if not store.has_login_accounts():
            return store.demo_annotator()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "this server has annotator accounts: send your token as 'Authorization: Bearer "
                "TOKEN' (the API key of an OpenAI client); an admin makes one with "
                "./launch.sh serve-token NAME",
                code="missing_api_key",
            )
        refusal = store.token_refusal(address)
        if refusal is not None:
            raise ApiError(429, refusal.message, code="too_many_invalid_tokens", kind="rate_limit_error")
        annotator = store.annotator_for_token(token.strip())
        if annotator is None:
            store.record_event(TOKEN_FAILED, address=address)
            raise ApiError(
                401,
                "this token is not valid here (unknown, or its account cannot log in or is "
                "disabled): ask for a new one (./launch.sh serve-token NAME)",
                code="invalid_api_key",
            )
        return annotator

    async def caller(request: Request) -> Annotator:
        return await run_in_threadpool(
            who, request.headers.get("authorization"), client_address(request.scope, cfg.app)
        )

    def max_model_len(contestant: Contestant) -> int | None:
        """The context the pool holds the model's requests to (vLLM's ``max_model_len``); None when it has
        none or cannot load."""
        try:
            return pool.context_length(contestant)
        except Exception:  # noqa: BLE001 - a model that does not load still is listed
            return None

    def model_list() -> list[dict]:
        created = {run.run_id: _epoch(run.created) for run in completed_runs(cfg)}
        return [
            {
                "id": contestant.checkpoint_id,
                "object": "model",
                "created": created.get(run_id, 0),
                "owned_by": "chimed",
                "max_model_len": max_model_len(contestant),
            }
            for contestant in resolve_contestants(cfg, run_checkpoints(cfg, run_id))
        ]

    def health() -> tuple[int, dict]:
        """200 once every stage of the run can answer without loading anything; 503 before, and when one
        cannot (its model failed to load, or its process died)."""
        contestants = resolve_contestants(cfg, run_checkpoints(cfg, run_id))
        waiting = [c.checkpoint_id for c in contestants if not pool.ready(c)]
        if not contestants:
            return 503, {"status": "unavailable", "message": f"run {run_id!r} has no completed stages here"}
        if waiting:
            return 503, {"status": "loading", "models": len(contestants), "not_ready": waiting}
        return 200, {"status": "ok", "models": len(contestants)}

    @app.get("/health")
    async def health_route() -> JSONResponse:
        status, body = await run_in_threadpool(health)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        await caller(request)
        return {"object": "list", "data": await run_in_threadpool(model_list)}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict:
        await caller(request)
        for entry in await run_in_threadpool(model_list):
            if entry["id"] == model:
                return entry
        raise ApiError(
            404, f"the model {model!r} does not exist here (run {run_id!r})", param="model", code="model_not_found"
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        annotator = await caller(request)
        body = await _json_body(request, "a chat completion request")
        chat = await run_in_threadpool(parse_chat_request, arena, run_id, body)
        request = PanelRequest(chat.contestant, chat.messages, stop=chat.stop, template_kwargs=chat.template_kwargs)
        request.prompt = await run_in_threadpool(encode, request, chat)  # (never under the model's lock)
        # choice i: a generation of its own with seed + i (they take the model's lock in turn)
        generations = [
            await run_in_threadpool(pool.generate, [request], chat.decoding.for_choice(i)) for i in range(chat.n)
        ]
        is_chat = is_chat_stage(chat.contestant.stage)
        pieces = answer_pieces(generations[0], AnswerText(is_chat, chat.stop))
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": chat.contestant.checkpoint_id,
        }
        headers = {"X-ChiMed-Seed": str(chat.decoding.seed)}
        dropped = {}  # said whenever trimming is on, even when nothing had to go
        if chat.trim:
            dropped = {"dropped_messages": list(request.prompt.dropped)}
            headers["X-ChiMed-Dropped-Messages"] = str(len(request.prompt.dropped))
        first = await anext(pieces)  # a model that fails before its first word is an HTTP error
        if first.error is not None:
            raise ApiError(500, f"{chat.contestant.checkpoint_id} failed: {first.error}", code="model_error")
        log = _log_line(annotator, chat, time.perf_counter())
        if chat.stream:
            return StreamingResponse(
                _events(head, first, pieces, chat.include_usage, log, dropped),
                media_type="text/event-stream",
                headers=headers | {"Cache-Control": "no-cache"},
            )
        try:
            finished = [await _whole(first, pieces, chat.contestant.checkpoint_id)]
            for generation in generations[1:]:
                more = answer_pieces(generation, AnswerText(is_chat, chat.stop))
                finished.append(await _whole(await anext(more), more, chat.contestant.checkpoint_id))
        finally:  # (a failed choice: the others are not needed)
            for generation in generations:
                generation.cancel()
        for _, piece in finished:
            log(piece)
        scored = [None] * len(finished)
        if chat.top_logprobs is not None:
            sequences = [request.prompt.ids + list(piece.end.token_ids) for _, piece in finished]
            scored = await scores_of(chat.contestant, sequences, chat.top_logprobs)
        tokenizer = pool.tokenizer_for(chat.contestant) if chat.top_logprobs is not None else None
        start = len(request.prompt.ids)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None
                if scores is None
                else {
                    "content": chat_logprobs(tokenizer, request.prompt.ids + list(piece.end.token_ids), start, scores)
                },
                "finish_reason": piece.finish_reason,
            }
            for i, ((text, piece), scores) in enumerate(zip(finished, scored))
        ]
        usage = _usage(finished[0][1].end)
        usage["completion_tokens"] = sum(piece.end.n_tokens for _, piece in finished)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse(
            head | {"object": "chat.completion", "choices": choices, "usage": usage} | dropped,
            headers=headers,
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        annotator = await caller(request)
        body = await _json_body(request, "a completion request")
        completion = await run_in_threadpool(parse_completion_request, cfg, run_id, body)
        contestant, started = completion.contestant, time.perf_counter()
        prompts = await run_in_threadpool(encode_prompts, completion)
        if completion.max_tokens:
            requests = [
                PanelRequest(contestant, [], stop=completion.stop, prompt=prompt, raw=True) for _, prompt in prompts
            ]
            generation = await run_in_threadpool(pool.generate, requests, completion.decoding)
            answers = await run_in_threadpool(generation.wait)
        else:
            answers = [Answer(contestant.checkpoint_id, done=True, finish_reason="length") for _ in prompts]
        failed = next((a.error for a in answers if a.error is not None), None)
        if failed is not None:
            raise ApiError(500, f"{contestant.checkpoint_id} failed: {failed}", code="model_error")
        sequences = [prompt.ids + list(answer.token_ids) for (_, prompt), answer in zip(prompts, answers)]
        scored = [None] * len(sequences)
        if completion.logprobs is not None:
            scored = await scores_of(contestant, sequences, completion.logprobs)
        tokenizer = pool.tokenizer_for(contestant)
        choices = []
        for i, ((text, prompt), answer, ids, scores) in enumerate(zip(prompts, answers, sequences, scored)):
            start = 0 if completion.echo else len(prompt.ids)
            logprobs = None if scores is None else completion_logprobs(tokenizer, ids, start, scores)
            choices.append(
                {
                    "index": i,
                    "text": (text if completion.echo else "") + answer.text,
                    "logprobs": logprobs,
                    "finish_reason": answer.finish_reason or "stop",
                }
            )
        prompt_tokens = sum(len(prompt.ids) for _, prompt in prompts)
        completion_tokens = sum(len(answer.token_ids) for answer in answers)
        print(
            f"serve: {annotator.name} · {contestant.checkpoint_id} · completions · seed {completion.decoding.seed} · "
            f"{len(prompts)} prompts · {prompt_tokens} prompt + {completion_tokens} completion tokens · "
            f"{time.perf_counter() - started:.2f} s",
            flush=True,
        )
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": contestant.checkpoint_id,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            headers={"X-ChiMed-Seed": str(completion.decoding.seed)},
        )

    async def scores_of(contestant: Contestant, sequences: list[list[int]], top: int) -> list:
        """The worker's scoring of each sequence (:meth:`ModelPool.score`); a failure is the model's 500."""
        try:
            return await run_in_threadpool(pool.score, contestant, sequences, top)
        except Exception as err:  # noqa: BLE001 - as when it fails to answer
            raise ApiError(
                500, f"{contestant.checkpoint_id} failed: {describe_error(err)}", code="model_error"
            ) from None

    def encode_prompts(completion: CompletionRequest) -> list[tuple[str, Prompt]]:
        """Each prompt's text (as echoed) and its ids, whole, fitted with max_tokens to the model's context."""
        try:
            tokenizer = pool.tokenizer_for(completion.contestant)
            out = []
            for i in range(len(completion.prompts)):
                text, ids = completion_prompt(arena, tokenizer, completion, i)
                out.append((text, pool.fit_ids(completion.contestant, ids, completion.max_tokens)))
            return out
        except ContextLengthExceeded as err:
            raise ApiError(400, str(err), param="prompt", code="context_length_exceeded") from None
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - its model does not load: as when it fails to answer
            raise ApiError(
                500, f"{completion.contestant.checkpoint_id} failed: {describe_error(err)}", code="model_error"
            ) from None

    def encode(request: PanelRequest, chat: ChatRequest) -> Prompt:
        """The request's prompt as its model reads it, whole, or with its oldest turns left out when asked."""
        try:
            return pool.encode(request, chat.decoding.max_new_tokens, chat.trim)
        except ContextLengthExceeded as err:
            raise ApiError(400, str(err), param="messages", code="context_length_exceeded") from None
        except Exception as err:  # noqa: BLE001 - its model does not load: as when it fails to answer
            raise ApiError(
                500, f"{chat.contestant.checkpoint_id} failed: {describe_error(err)}", code="model_error"
            ) from None

    return app


async def _whole(first: Piece, pieces: AsyncIterator[Piece], model: str) -> tuple[str, Piece]:
    """A choice's whole text and its last piece (the one with the answer), from its ``first`` piece on; a
    failed model is a 500."""
    text, piece = first.text, first
    while piece.end is None and piece.error is None:
        piece = await anext(pieces)
        text += piece.text
    if piece.error is not None:
        raise ApiError(500, f"{model} failed: {piece.error}", code="model_error")
    return text, piece


async def _json_body(request: Request, what: str) -> dict:
    """The request's body, a JSON object (400 otherwise)."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object ({what})")
    return body


async def _events(head: dict, first: Piece, pieces: AsyncIterator[Piece], include_usage: bool, log, extension: dict):
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; ``extension``'s fields
    (what trimming left out) go with the first chunk."""

    def chunk(delta: dict, finish_reason: str | None = None, more: dict | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse(head | {"object": "chat.completion.chunk", "choices": [choice]} | (more or {}))

    yield chunk({"role": "assistant", "content": ""}, more=extension)
    piece = first
    while True:
        if piece.error is not None:
            yield _sse(ApiError(500, f"{head['model']} failed: {piece.error}", code="model_error").body())
            break
        if piece.text:
            yield chunk({"content": piece.text})
        if piece.end is not None:
            yield chunk({}, piece.finish_reason)
            if include_usage:
                yield _sse(head | {"object": "chat.completion.chunk", "choices": [], "usage": _usage(piece.end)})
            log(piece)
            break
        piece = await anext(pieces)
    yield "data: [DONE]\n\n"


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(answer: Answer) -> dict:
    prompt = answer.prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": answer.n_tokens, "total_tokens": prompt + answer.n_tokens}


def _log_line(annotator: Annotator, chat: ChatRequest, started: float):
    """Who asked which model what it cost, printed when the answer is complete (the text is not logged)."""

    def log(piece: Piece) -> None:
        answer = piece.end
        print(
            f"serve: {annotator.name} · {chat.contestant.checkpoint_id} · seed {chat.decoding.seed} · "
            f"{answer.prompt_tokens or 0} prompt + {answer.n_tokens} completion tokens · "
            f"{answer.latency_s or time.perf_counter() - started:.2f} s · {piece.finish_reason}",
            flush=True,
        )

    return log


def _epoch(created: str) -> int:
    try:
        return int(datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return 0


# --- the command -----------------------------------------------------------------------------------------

READY = re.compile(r"serving (\d+) models at (http://\S+/v1)")  # the line printed once the server listens


class _Server(uvicorn.Server):
    """uvicorn's server that calls ``on_ready(url)`` once its socket is bound (the real port when asked for 0)."""

    def __init__(self, config: uvicorn.Config, on_ready) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            self.on_ready(f"http://{host}:{port}/v1")


def serve_run(cfg: Config, run_id: str, host: str, port: int) -> None:
    """Serve run ``run_id``'s stages on ``host:port`` until interrupted."""
    models = run_checkpoints(cfg, run_id)
    if not models:
        known = [run.run_id for run in completed_runs(cfg)]
        raise UserError(
            f"no completed run {run_id!r} under {cfg.runs_dir}: choose one of "
            f"{', '.join(known[:8]) or 'none yet (train one with ./launch.sh train-all)'}"
        )
    store = PreferenceStore.from_config(cfg)
    pool = ModelPool(cfg)

    def on_ready(url: str) -> None:
        print(f"serving {len(models)} models at {url}", flush=True)
        if cfg.app.preload_newest_run:  # the run's models load now, before the first request asks for them
            threading.Thread(
                target=pool.preload, args=(resolve_contestants(cfg, models),), daemon=True, name="preload"
            ).start()

    try:
        accounts = (
            "a bearer token per annotator"
            if store.has_login_accounts()
            else f"no token (no annotator accounts: requests are the demo annotator's; {ADD_ACCOUNT_HINT})"
        )
        print(f"run {run_id}: {', '.join(models)}; login: {accounts}", flush=True)
        threading.Thread(target=warm_up, daemon=True, name="deid-warm-up").start()
        server = _Server(
            uvicorn.Config(build_server(cfg, run_id, store, pool), host=host, port=port, timeout_graceful_shutdown=5),
            on_ready,
        )
        try:
            server.run()
        except SystemExit:
            if server.started:
                raise
            raise UserError(
                f"cannot listen on {host}:{port} (taken by another server, or not an address of this "
                "machine): choose another --port or --host"
            ) from None
    finally:
        pool.close()
        store.close()
