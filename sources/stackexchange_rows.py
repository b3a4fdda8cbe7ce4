"""Accounting for every row of every StackExchange file read: what became of it (one outcome per row).

Pair candidates are not rows: a question row gives one candidate in each question dataset built
(title_body, question_answer), an answer is at most the document of one question_answer candidate, a
duplicate link gives one duplicates candidate. The funnel counts candidates; this accounting counts rows, so
an auditor can reconcile ``Posts.xml`` and ``PostLinks.xml`` with the funnel's ``read`` stage.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Iterator

QUESTION_USED = "question_used"
QUESTION_KINDS_OFF = "question_not_used"
ANSWER_USED = "answer_used_as_document"
ANSWER_NOT_CHOSEN = "answer_not_chosen"
ANSWER_ORPHAN = "answer_without_question"
ANSWER_KIND_OFF = "answer_not_used"
OTHER_POST_TYPE = "other_post_type"
LINK_USED = "duplicate_link_used"
LINK_OTHER = "link_of_another_type"
MALFORMED = "malformed:"  # + the reject reason (rejects/stackexchange_posts holds each such row)

MEANINGS = {
    QUESTION_USED: "question: one candidate in each question dataset built (title_body, question_answer)",
    QUESTION_KINDS_OFF: "question: no question dataset built (only a side of duplicate links)",
    ANSWER_USED: "answer taken as the document of its question's question_answer candidate",
    ANSWER_NOT_CHOSEN: "answer not taken (another answer was accepted or scored higher, or below the score bar)",
    ANSWER_ORPHAN: "answer whose question is not in the dump",
    ANSWER_KIND_OFF: "answer: question_answer not built",
    OTHER_POST_TYPE: "post of another type (tag wiki, excerpt, moderator nomination...): no pair kind uses it",
    LINK_USED: "duplicate link (LinkTypeId 3): one stackexchange_duplicates candidate",
    LINK_OTHER: "link of another type (linked, not duplicate): no pair kind uses it",
    MALFORMED: "row that could not be read (reason after the colon; the row is in rejects/stackexchange_posts)",
}

# Row-level problems of a whole archive: reported as warnings, not rows.
ARCHIVE_PROBLEMS = frozenset({"unreadable_archive", "unsafe_archive_member", "duplicate_archive_member",
                              "archive_member_too_large"})

CANDIDATES_NOTE = ("The funnel's read stage counts pair candidates, not rows: each question row gives one "
                   "candidate in every question dataset built (stackexchange_title_body, "
                   "stackexchange_question_answer), each duplicate link one stackexchange_duplicates candidate; "
                   "answers are documents of question_answer candidates, and other rows give none.")


def meaning_of(outcome: str) -> str:
    if outcome.startswith(MALFORMED):
        return MEANINGS[MALFORMED]
    return MEANINGS.get(outcome, outcome)


def answer_outcomes(answers: Iterable[dict[str, Any]], chosen_ids: set[str], has_question: bool
                    ) -> Iterator[tuple[str, str]]:
    """(provenance input name, outcome) for each answer of one question (or of a missing one)."""
    for answer in answers:
        if not has_question:
            outcome = ANSWER_ORPHAN
        else:
            outcome = ANSWER_USED if answer["id"] in chosen_ids else ANSWER_NOT_CHOSEN
        yield answer["input"], outcome


def summarize(counts: Iterable[tuple[str, str, int]], files: dict[str, dict[str, str]],
              archive_names: dict[str, str], read_links: bool) -> dict[str, Any]:
    """Counted (provenance input, outcome, n) -> the accounting the manifest and card show.

    ``files`` maps each table's provenance name to {"input": manifest input name, "member": archive member or
    "", "site": ..., "table": "Posts.xml" | "PostLinks.xml"}; ``archive_names`` maps an archive's base name
    (the provenance of archive-level rejects) to its manifest input name."""
    per_input: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for entry in files.values():
        per_input[entry["input"]][entry["member"]]  # every file read is listed, even with no rows
    warnings: list[str] = []
    table_rows: dict[tuple[str, str], int] = defaultdict(int)
    for name, outcome, count in counts:
        entry = files.get(name)
        if entry is None:
            reason = outcome[len(MALFORMED):] if outcome.startswith(MALFORMED) else outcome
            if reason in ARCHIVE_PROBLEMS:
                warnings.append(f"{archive_names.get(name, name)}: {reason.replace('_', ' ')} "
                                f"({count} problem(s); see rejects/stackexchange_posts)")
                continue
            entry = {"input": name, "member": "", "site": "", "table": ""}
        per_input[entry["input"]][entry["member"]][outcome] += count
        table_rows[(entry["site"], entry["table"])] += count
    if read_links:
        sites = sorted({entry["site"] for entry in files.values() if entry["table"] == "Posts.xml"})
        for site in sites:
            if not table_rows.get((site, "PostLinks.xml")):
                warnings.append(f"{site}: no PostLinks.xml rows read, so no stackexchange_duplicates pairs "
                                "(pass the whole dump folder or SITE.7z to get them)")
    inputs: dict[str, dict[str, Any]] = {}
    totals: dict[str, int] = defaultdict(int)
    for input_name in sorted(per_input):
        members = per_input[input_name]
        merged: dict[str, int] = defaultdict(int)
        for outcomes in members.values():
            for outcome, count in outcomes.items():
                merged[outcome] += count
                totals[outcome] += count
        summary: dict[str, Any] = {"rows": sum(merged.values()), "rows_by_outcome": dict(sorted(merged.items()))}
        if any(member for member in members):
            summary["members"] = {member: {"rows": sum(outcomes.values()),
                                           "rows_by_outcome": dict(sorted(outcomes.items()))}
                                  for member, outcomes in sorted(members.items()) if member}
        inputs[input_name] = summary
    return {
        "inputs": inputs,
        "rows": sum(totals.values()),
        "rows_by_outcome": dict(sorted(totals.items())),
        "outcomes": {outcome: meaning_of(outcome) for outcome in sorted(totals)},
        "note": CANDIDATES_NOTE,
        "warnings": sorted(set(warnings)),
    }
