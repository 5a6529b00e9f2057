"""A scripted annotator for the "Run a study" page: works through one account's queue on a running arena app
through its documented API (``gradio_client``), as a clinician's script would.

In a real study clinicians judge in the browser. This script stands in for them so that the page can run
unattended: it acknowledges the guideline in force (``/acknowledge_guideline``), then takes each queue prompt
(``/queue_next``; in a round whose contestants the admin fixed, those answer it), and judges it (``/judge``) by a
fixed rule, the longer answer wins (equal lengths: a tie), with 1-5 scores on the guideline's criteria. The
judgments are blind: the names come back only with each judgment's ``reveal``. A prompt the queue resolved
without a clinician (``resolved``: adaptive allocation, identical answers) is not judged: the next one is taken.

    .venv/bin/python docs/study/annotate.py --url http://127.0.0.1:7931/ --user dr_li --password-file FILE

Prints one line per judgment and a last line "NAME judged N prompts (queue DONE / TOTAL)".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def connect(url: str, user: str, password: str, wait_s: float):
    """A ``gradio_client.Client`` logged in as ``user``, waiting up to ``wait_s`` seconds for the app to listen."""
    from gradio_client import Client

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Client(url, auth=(user, password), verbose=False)
        except Exception as err:  # the app is still starting (connection refused, no config yet)
            if time.monotonic() > deadline:
                raise SystemExit(f"error: no arena app at {url} after {wait_s:.0f} s: {err}") from None
            time.sleep(2)


def choose(answers: list[dict]) -> str:
    """The stand-in rule: the label of the longer answer; "tie" when the two are as long."""
    first, second = sorted(answers, key=lambda a: len(a["text"].strip()), reverse=True)[:2]
    return "tie" if len(first["text"].strip()) == len(second["text"].strip()) else first["label"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the arena app, e.g. http://127.0.0.1:7931/")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True, help="a file holding the account's password")
    parser.add_argument("--wait", type=float, default=180, help="seconds to wait for the app to start")
    args = parser.parse_args(argv)
    password = Path(args.password_file).read_text(encoding="utf-8").strip()
    client = connect(args.url, args.user, password, args.wait)

    guideline = client.predict(api_name="/acknowledge_guideline")
    criteria = [c["key"] for c in guideline["criteria"]]
    judged = 0
    while True:
        item = client.predict(accept_notice=True, api_name="/queue_next")
        if item["assignment_id"] is None:
            print(f"{args.user}: {item['message']}")
            break
        if "comparison_id" not in item:
            raise SystemExit(
                "error: this round has no contestants fixed by the admin "
                "(queue-round --contestants): the script does not choose them"
            )
        if item.get("resolved"):  # adaptive allocation: identical answers, settled as a tie without a clinician
            print(f"{args.user}: prompt {item['bank_prompt_id']}: {item['message']}")
            continue
        choice = choose(item["answers"])
        scores = (
            {a["label"]: {c: (4 if a["label"] == choice else 2) for c in criteria} for a in item["answers"]}
            if choice != "tie"
            else {}
        )
        out = client.predict(item["comparison_id"], choice, scores=scores, api_name="/judge")
        judged += 1
        winner = out["reveal"].get(choice, "tie")
        print(f"{args.user}: prompt {item['bank_prompt_id']} ({item['split']}): {choice} -> {winner}")
    print(f"{args.user} judged {judged} prompts (queue {item['done']} / {item['total']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
