"""The app's sections: decoding, endpoint contestants, the arena's own settings, and the study."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import UserError


@dataclass
class DecodingConfig:
    """The app's default decoding (changeable per comparison in the Compare tab; stored with each answer)."""

    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = -1  # -1 = a fresh random seed for each comparison (the seed used is stored with the answers)
    # the bounds of the Compare tab's sliders and of every comparison's settings (API calls included)
    max_temperature: float = 2.0  # beyond it the answers are noise
    max_new_tokens_limit: int = 4096  # a typo in the settings should not keep a model busy for an hour


LEAK_TERMS = (
    "Baichuan",
    "百川",
    "Qwen",
    "通义千问",
    "千问",
    "阿里云",
    "ChatGPT",
    "GPT-4",
    "GPT-3",
    "OpenAI",
    "Claude",
    "Anthropic",
    "LLaMA",
    "Llama",
    "Meta AI",
    "ChatGLM",
    "智谱",
    "DeepSeek",
    "深度求索",
    "文心一言",
    "ERNIE",
    "Gemini",
    "Google",
    "Mistral",
    "InternLM",
    "浦语",  # 书生·浦语; "书生" alone is an ordinary word (a scholar) and a substring of 读书生活, 本书生动
    "Yi-34B",
    "零一万物",
    "Qilin-Med",
    "HuatuoGPT",
    "华佗GPT",
    "Zhongjing",
    "仲景",
    "DISC-MedLLM",
    "ChiMed",
)


MAX_STOP_STRINGS = 4  # an OpenAI chat completion takes at most 4 stop strings
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class EndpointConfig:
    """A contestant served by an OpenAI-compatible engine (vLLM, SGLang, TGI, a hospital's deployment, a
    commercial API, ``./launch.sh serve``): its answers stream from ``base_url``'s chat completions
    (``app/serving/endpoints.py``). The engine applies the served model's own chat template; ``system_prompt``, when
    given, goes first in every conversation."""

    name: str = ""  # its checkpoint id is "endpoint:<name>": letters, digits, . _ - (a new name for a new model)
    base_url: str = ""  # the API root, e.g. http://127.0.0.1:8000/v1
    model: str = ""  # the model name the engine serves (its /v1/models id)
    # the name of an environment variable holding the API key, read at each request (never stored or shown);
    # "" = the endpoint needs no key
    api_key_env: str = ""
    system_prompt: str = ""
    max_concurrency: int = 4  # requests in flight to it at once; further panels wait for a slot
    timeout_s: float = 120.0  # a whole answer must arrive within this time, else its panel fails
    # strings the engine ends an answer before (OpenAI's stop, at most 4); serve-plan gives base and cpt the
    # plain turn markers, where the pool cuts their answers too
    stop: list[str] = field(default_factory=list)


def url_without_secrets(url: str) -> str:
    """``url`` as it may be shown, logged and stored: without user:password@, query string or fragment."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(not a URL)"
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, host + (f":{port}" if port is not None else ""), parts.path, "", ""))


def check_endpoints(endpoints: list, where: str) -> None:
    """Each endpoint named once, with an http(s) URL, a model, a well-formed key variable and positive limits.
    A URL is only ever repeated without its secrets (:func:`url_without_secrets`)."""
    from urllib.parse import urlsplit

    seen = set()
    for i, e in enumerate(endpoints):
        at = f"{where}[{i}]"
        if not ENDPOINT_NAME.match(e.name):
            raise UserError(
                f"config: {at}.name={e.name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it names the contestant: endpoint:<name>)"
            )
        if e.name in seen:
            raise UserError(f"config: {at}.name={e.name!r} is used twice: give each endpoint its own name")
        seen.add(e.name)
        shown = url_without_secrets(e.base_url)
        try:
            url = urlsplit(e.base_url)
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise UserError(f"config: {at}.base_url is not a URL: write it as http://HOST:PORT/v1") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"config: {at}.base_url={shown!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
        if url.username is not None or url.password is not None or url.query or url.fragment:
            raise UserError(
                f"config: {at}.base_url={shown!r} holds a user, password or query string: give the "
                "API root alone, and put a key in an environment variable named in api_key_env"
            )
        if not e.model.strip():
            raise UserError(f"config: {at}.model is missing: the model name the endpoint serves (its /v1/models id)")
        if e.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", e.api_key_env):
            # (its value is not repeated: it may be the key itself, pasted by mistake)
            raise UserError(
                f"config: {at}.api_key_env must be the NAME of an environment variable holding the key "
                "(e.g. HOSPITAL_API_KEY), never the key itself"
            )
        if e.max_concurrency < 1 or not e.timeout_s > 0:
            raise UserError(f"config: {at}: max_concurrency must be at least 1 and timeout_s above 0")
        if len(e.stop) > MAX_STOP_STRINGS or not all(isinstance(x, str) and x for x in e.stop):
            raise UserError(
                f"config: {at}.stop must be at most {MAX_STOP_STRINGS} non-empty strings (the OpenAI API's limit)"
            )


def check_batch_rows(rows: int, where: str) -> None:
    if rows < 1:
        raise UserError(f"config: {where}={rows}: a batch needs at least 1 row")


@dataclass
class AppConfig:
    """The arena app (``app/``): server, limits, serving and the default decoding."""

    host: str = "127.0.0.1"
    port: int = 7860
    session_hours: float = 12.0  # a browser login lasts this long (a clinic shift), then the login page again
    # behind a reverse proxy: the header holding the client's address (e.g. "X-Forwarded-For"), believed only
    # for requests from trusted_proxies (the proxy's own addresses); "" = the connection's address (docs/configuration.md)
    client_address_header: str = ""
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_prompt_chars: int = 2000  # longer prompts are refused with a message (serve: any message, whatever its role)
    # a conversation whose prompt plus max new tokens does not fit a model's context is refused (serve: 400
    # context_length_exceeded; arena: the panel's error); true: its oldest turns are left out until it fits
    # (the leading system messages and the last user message stay), and the answer says which (docs/serving.md "Serving a run over the OpenAI API")
    trim_history: bool = False
    # serve: the most alternatives per token a request may ask for (/v1/completions' logprobs, the chat's
    # top_logprobs; as vLLM's --max-logprobs, 20 by default; OpenAI allows 5 and 20); more is refused with a 400
    max_logprobs: int = 20
    # serve's /v1/chat/completions: the most choices a request may ask for with n (each a sample of its own,
    # decoded in one batch with the others); more is refused with a 400
    max_n: int = 4
    blind: bool = True  # Compare tab: hide the contestants' names (模型 A/B/C/D) until the judgment
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    device: str = ""  # where the model pool serves: "" = CUDA when there is one, else CPU
    max_loaded_models: int = 4  # full models the pool keeps in memory (each run has two: base and cpt)
    concurrent_comparisons: int = 8  # comparisons generating at once across browser sessions and API calls
    # the most rows (answers) one model process decodes in one batch: every request to a model, from any caller,
    # joins its batch at the next step (docs/serving.md "Batching across requests"); requests beyond it wait
    # for rows to end. Bounds the batch's memory (its cache grows with rows x tokens) on a GPU.
    max_batch_rows: int = field(default=64, metadata={"check": check_batch_rows})
    recent_pairs: int = 20  # pairs listed in the Data tab
    preload_newest_run: bool = True  # load the newest run's contestants when the app starts
    # torch threads per operation when serving on CPU (0 = torch's default, one per core): panels on
    # different full models generate in parallel processes, each kept to this many cores of its own, and
    # on a few cores one thread each beats several threads per panel spin-waiting for each other (10-100x
    # slower on a busy 2-core machine)
    cpu_threads: int = 1
    # CPU: 0 = every model held whole, so clinicians judge exactly the checkpoint the evaluation scored;
    # 8 = a full model trained from another one the pool serves (a run's cpt from its base) is held as that
    # model's weights, shared between the worker processes, plus its difference in 8 bits (a quarter of a
    # model's bytes; the demo's exam scores are unchanged, BENCHMARKS.md "Serving"). Stored with each answer.
    delta_bits: int = 0
    # names an answer must not give away (blind judging): an answer naming one of them, or a contestant's
    # run or checkpoint id, is flagged when it is generated, and the flag is stored with it
    leak_terms: list[str] = field(default_factory=lambda: list(LEAK_TERMS))
    # contestants served by OpenAI-compatible engines, listed beside the runs' stages (docs/serving.md "Endpoint contestants")
    endpoints: list[EndpointConfig] = field(default_factory=list, metadata={"check": check_endpoints})


INTERIM_RESULTS = ("admins", "everyone")
DECISIONS = ("anytime", "fixed")


def check_decisions(value: str, where: str) -> None:
    if value not in DECISIONS:
        raise UserError(f"config: {where}={value!r}: choose one of {', '.join(DECISIONS)}")


def check_alpha(value: float, where: str) -> None:
    if not 0 < value < 0.5:
        raise UserError(
            f"config: {where}={value}: the error rate of a verdict must be above 0 and below 0.5 (e.g. 0.05)"
        )


def check_margin(value: float, where: str) -> None:
    if not 0 <= value < 0.5:
        raise UserError(f"config: {where}={value}: a margin in win rate from 0 to below 0.5 (e.g. 0.05)")


ALLOCATIONS = ("uniform", "adaptive")


def check_allocation(value: str, where: str) -> None:
    if value not in ALLOCATIONS:
        raise UserError(f"config: {where}={value!r}: choose one of {', '.join(ALLOCATIONS)}")


def check_pair_floor(value: float, where: str) -> None:
    if not 0 < value <= 1:
        raise UserError(
            f"config: {where}={value}: the share of uniformly drawn pairs must be above 0 and at most 1 (e.g. 0.2)"
        )


def check_interim_results(value: str, where: str) -> None:
    if value not in INTERIM_RESULTS:
        raise UserError(f"config: {where}={value!r}: choose one of {', '.join(INTERIM_RESULTS)}")


@dataclass
class StudyConfig:
    """A clinician study's rules for who sees what: read by the app's tabs, its API and the ``study`` command
    alike (a section of its own, not ``store`` or ``app``, since all of them must apply it the same way)."""

    # while a queue round is open (queue-round .. queue-round --close), the leaderboard, win rates and
    # run-vs-run verdicts go to admins only: an assessor who learns which stage tends to win, and its style,
    # is no longer blind (as a trial keeps interim analyses from its assessors). Annotators see their own
    # progress. everyone: no such screen
    interim_results: str = field(default="admins", metadata={"check": check_interim_results})
    # how the run-vs-run verdict (compare-runs, the Leaderboard tab, the API, the run's results) is decided:
    # anytime = a confidence sequence for the new checkpoint's win rate over the bank prompts, valid however often
    # it is read (after every judgment); once it decides, the queue of an open round of exactly those two
    # checkpoints hands out nothing more (docs/study.md "Decisions that stop"). fixed = the bootstrap verdict
    # read once, at the end of a preregistered study of a planned size (bench_sizing.py sizes it)
    decisions: str = field(default="anytime", metadata={"check": check_decisions})
    alpha: float = field(default=0.05, metadata={"check": check_alpha})  # anytime: the chance of a wrong verdict
    # anytime: "same" when the whole interval of the win rate lies within 0.5 ± margin
    margin: float = field(default=0.05, metadata={"check": check_margin})
    # how the queue spends clinicians' judgments (docs/run-a-study.md "Adaptive allocation"): uniform = every bank
    # prompt to store.annotators_per_prompt annotators, every contestant of the round on it; adaptive = a second
    # annotator always, a third (up to k) only where the first ones disagree; in a two-contestant round a prompt
    # whose two answers are the same text (after whitespace normalisation) is resolved as a tie without a clinician,
    # and in a round of 3-4 contestants each prompt shows the pair whose order is least certain (active sampling,
    # study.pair_floor). Recorded with each round when it starts (queue-round), so every replica and the API follow
    # the round's rule. Adaptive since the simulation (BENCHMARKS.md "Adaptive allocation") showed 30-45% fewer
    # judgments at the same share of right majority verdicts
    allocation: str = field(default="adaptive", metadata={"check": check_allocation})
    # adaptive allocation in a round of 3-4 contestants: this share of the prompts gets a pair drawn uniformly from
    # all of them, the rest the pair whose order is least certain, so every pair keeps a chance of at least
    # pair_floor / (number of pairs) (docs/run-a-study.md "Active sampling of pairs"); 1 = uniform pairs
    pair_floor: float = field(default=0.2, metadata={"check": check_pair_floor})
