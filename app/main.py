"""The ChiMed Arena app: a notice gate, then the Compare, Guidelines, Leaderboard, Data and Runs tabs.

``./launch.sh app`` calls :func:`launch_app`; tests build the Blocks with :func:`build_app`. The app
holds one preference store and one model pool for all browser sessions; everything a session
remembers lives in its own ``gr.State``.
"""

from __future__ import annotations

import threading

import gradio as gr
from starlette.middleware import Middleware

from app.api import build_api, hide_ui_callbacks
from app.arena import Arena, ArenaSession
from app.auth import AccountGuard, build_account_box, identify, identity_line, login_checker
from app.contestants import default_checkpoints, resolve_contestants
from app.identifiers import warm_up
from app.notice import ACCEPT_LABEL, footer_markdown, notice_markdown
from app.serving.pool import ModelPool
from app.tabs.compare import build_compare_tab, runs_and_contestants, status_line
from app.tabs.data import build_data_tab
from app.tabs.guidelines import build_guidelines_tab
from app.tabs.leaderboard import build_leaderboard_tab
from app.tabs.runs import build_runs_tab
from core.config import Config
from core.errors import UserError
from preference_store.repository import PreferenceStore

TITLE = "ChiMed Arena · 医学大模型对比评测"
# the notice stays on screen at the bottom of every page, above whatever scrolls under it
CSS = """
#notice-footer { position: sticky; bottom: 0; z-index: 10; background: var(--background-fill-secondary);
                 border-top: 1px solid var(--border-color-primary); padding: 4px 12px; font-size: 0.85em; }
#notice-gate { border: 2px solid var(--color-accent); border-radius: 8px; padding: 12px; }
.arena-chat button[aria-label="Clear"] { display: none; }  /* a panel is cleared with the arena's own buttons */
"""


def build_app(
    cfg: Config, store: PreferenceStore | None = None, pool: ModelPool | None = None, overrides: list[str] | None = None
) -> gr.Blocks:
    """The app's Blocks (not launched). ``store`` and ``pool`` default to the config's; ``overrides``: the
    config overrides the app was started with, which a training it starts gets too."""
    store = store or PreferenceStore.from_config(cfg)
    pool = pool or ModelPool(cfg)
    arena = Arena(cfg, store, pool)
    with gr.Blocks(title="ChiMed Arena", analytics_enabled=False) as demo:  # no telemetry leaves the machine
        session = gr.State(ArenaSession(blind=cfg.app.blind))
        gr.Markdown(f"# {TITLE}")
        identity = gr.Markdown(elem_id="identity")
        account = build_account_box(cfg, store)
        with gr.Column(visible=True, elem_id="notice-gate") as gate:
            gr.Markdown(notice_markdown())
            accept = gr.Button(ACCEPT_LABEL, variant="primary", elem_id="accept-notice")
        with gr.Column(visible=False, elem_id="arena-main") as main:
            with gr.Tabs():
                with gr.Tab("对比 Compare", elem_id="tab-compare"):
                    compare = build_compare_tab(cfg, arena, session)
                with gr.Tab("准则 Guidelines", elem_id="tab-guidelines") as guidelines_page:
                    guidelines = build_guidelines_tab(store, session, guidelines_page)
                with gr.Tab("排行榜 Leaderboard", elem_id="tab-leaderboard") as leaderboard:
                    build_leaderboard_tab(store, session, leaderboard, cfg.study.interim_results)
                with gr.Tab("数据 Data", elem_id="tab-data") as data:
                    admin_tools = build_data_tab(cfg, store, session, data)
                with gr.Tab("训练记录 Runs", elem_id="tab-runs") as runs:
                    runs_tab = build_runs_tab(cfg, runs, session, store, overrides)
        gr.Markdown(footer_markdown(), elem_id="notice-footer")
        build_api(arena, overrides)

        def on_load(state: ArenaSession, request: gr.Request):
            """Who this is (logged-in account or demo) and which runs exist now."""
            try:
                state.annotator = identify(store, getattr(request, "username", None))
                who = identity_line(state.annotator)
            except UserError as err:
                state.annotator = None
                who = status_line(str(err), ok=False)
            run, contestants, message = runs_and_contestants(cfg, [])
            is_admin = state.annotator is not None and state.annotator.is_admin
            return (
                state,
                who,
                gr.update(visible=is_admin),
                gr.update(visible=is_admin),
                run,
                contestants,
                message,
                *compare.load(state),
                *guidelines.load(state),
                gr.update(visible=state.annotator is not None and state.annotator.can_login),
            )

        def accept_notice(state: ArenaSession):
            state.notice_accepted = True
            return state, gr.update(visible=False), gr.update(visible=True)

        demo.load(
            on_load,
            [session],
            [
                session,
                identity,
                admin_tools,
                runs_tab.admin,
                compare.run,
                compare.contestants,
                compare.status,
                *compare.load_outputs,
                *guidelines.load_outputs,
                account,
            ],
        )
        accept.click(accept_notice, [session], [session, gate, main])
    hide_ui_callbacks(demo)  # only the documented API is public (app.api.API_ENDPOINTS)
    return demo


def launch_app(
    cfg: Config, host: str | None = None, port: int | None = None, overrides: list[str] | None = None
) -> None:
    """Start the app on ``host:port`` (defaults ``cfg.app.host``/``cfg.app.port``).

    With annotator accounts in the store the app asks for a login; without, it runs as "demo". The
    newest run's contestants (and the identifier screen's dictionaries) are loaded in the background so the
    first comparison does not wait.
    """
    store = PreferenceStore.from_config(cfg)
    pool = ModelPool(cfg)
    demo = build_app(cfg, store, pool, overrides)
    if cfg.app.preload_newest_run:
        newest = resolve_contestants(cfg, default_checkpoints(cfg))
        threading.Thread(target=pool.preload, args=(newest,), daemon=True, name="preload").start()
    # the identifier screen loads its dictionaries once (seconds): before the first prompt, not during it
    threading.Thread(target=warm_up, daemon=True, name="deid-warm-up").start()
    auth = login_checker(store)
    demo.queue(default_concurrency_limit=cfg.app.concurrent_comparisons)
    demo.launch(
        server_name=host or cfg.app.host,
        server_port=port or cfg.app.port,
        auth=auth,
        auth_message=("ChiMed Arena — 请使用标注账号登录 / log in with your annotator account. " + footer_markdown())
        if auth
        else None,
        footer_links=[],
        css=CSS,
        # inside Gradio's app: throttled logins, session lifetime, disabled accounts, audited logouts (app.auth)
        app_kwargs={"middleware": [Middleware(AccountGuard, cfg=cfg, store=store)]},
    )
