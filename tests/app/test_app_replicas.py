"""Two app processes (``python -m chimed app``) on one PostgreSQL database, as replicas behind a proxy:
they take concurrent annotators through the API, and every judgment is stored exactly once, whichever
replica took it."""

from __future__ import annotations

import threading
import uuid

from gradio_client import Client

from preference_store.repository import PreferenceStore

CLIENTS_PER_APP, ROUNDS = 4, 3
PROMPTS = ["头痛三天怎么办？", "高血压饮食注意什么？", "感冒发烧要吃抗生素吗？"]


def test_two_apps_on_one_postgresql_database_lose_and_duplicate_nothing(app_home, postgres_server, start_app):
    home, run_id = app_home
    url = postgres_server.create_database()  # empty: both replicas migrate it as they start
    try:
        # one after the other: two Gradio apps starting at once on 2 busy cores may miss Gradio's own
        # 3-second check that the page answers (opening one database at once is test_store_concurrency's)
        apps = [start_app(home, database_url=url) for _ in range(2)]
        pair = [f"{run_id}/sft", f"{run_id}/dpo"]
        judged, errors = [], []
        start = threading.Barrier(2 * CLIENTS_PER_APP)

        # made before the threads start; a generous timeout, as 8 annotators share 2 busy cores with the apps
        clients = [
            Client(apps[n % 2], verbose=False, httpx_kwargs={"timeout": 120}) for n in range(2 * CLIENTS_PER_APP)
        ]

        def annotate(client: Client, n: int) -> None:
            try:
                start.wait()
                for r in range(ROUNDS):
                    made = client.predict(f"{PROMPTS[r]}（{n}）", pair, True, api_name="/compare")
                    client_id = uuid.uuid4().hex
                    out = client.predict(
                        made["comparison_id"], "AB"[(n + r) % 2], client_id=client_id, api_name="/judge"
                    )
                    judged.append((made["comparison_id"], out["judgment_id"], client_id, out["duplicate"], n))
            except Exception as err:  # noqa: BLE001 - any error reaching an annotator fails the test
                errors.append(err)
                start.abort()

        threads = [threading.Thread(target=annotate, args=(client, n)) for n, client in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors

        # a resubmit (same client id) through the other replica returns the stored judgment, adds nothing
        comparison_id, judgment_id, client_id, _, n = judged[0]
        again = clients[n + 1 if n % 2 == 0 else n - 1].predict(
            comparison_id, "A", client_id=client_id, api_name="/judge"
        )
        assert again["duplicate"] and again["judgment_id"] == judgment_id

        total = 2 * CLIENTS_PER_APP * ROUNDS
        assert len(judged) == total and not any(duplicate for *_, duplicate, _ in judged)
        with PreferenceStore(url) as store:
            counts = store.counts()
            assert (counts.comparisons, counts.judgments, counts.pairs) == (total, total, total)
            stored = {j.id: j for cid, *_ in judged for j in store.judgments_for(cid)}
            assert sorted(stored) == sorted(jid for _, jid, *_ in judged)  # each judgment once, ids unique
            assert {(j.comparison_id, j.client_id) for j in stored.values()} == {(c, k) for c, _, k, *_ in judged}
            assert [a.name for a in store.list_annotators()] == ["demo"]  # one demo annotator for both apps
    finally:
        postgres_server.drop_database(url)
