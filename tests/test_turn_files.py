"""The context step's files (bot/turn/files.py) driven alone: documents written into the prompt
within its budget (the newest first, a long one cut with a note for the person), images sent
while there is room, older images named, earlier files read again by id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.conversation import IMAGE_TOKENS, Turn, estimate_tokens, prompt_window
from bot.events import SlackFile
from bot.files import Attachment
from bot.files.documents import page_marks
from bot.metrics import Metrics
from bot.turn.files import PDF_PAGE_TOKENS, SharedFiles

SYSTEM = "Be brief."


class Shelf:
    """Files already read, by id (what the FileReader returns from the store's cache)."""

    def __init__(self, *attachments: Attachment) -> None:
        self.files = {a.file_id: a for a in attachments}
        self.asked: list[list[str]] = []

    async def read(self, team: str, files: Sequence[SlackFile]) -> list[Attachment]:
        self.asked.append([f.id for f in files])
        return [self.files[f.id] for f in files]


def document(file_id: str, text: str) -> Attachment:
    return Attachment("document", file_id, f"{file_id}.txt", "text/plain", len(text), text=text)


def image(file_id: str) -> Attachment:
    return Attachment(
        "image", file_id, f"{file_id}.png", "image/png", 999, data=b"png", data_mime="image/png"
    )


def text_of(message: dict[str, object]) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content)
    assert isinstance(content, str)
    return content


def tokens(messages: list[dict[str, object]]) -> int:
    images = sum(
        1
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part.get("type") == "image_url"
    )
    return sum(estimate_tokens(text_of(m)) + 4 for m in messages) + IMAGE_TOKENS * images


async def prompt(
    files: SharedFiles,
    turns: list[Turn],
    fresh: Sequence[Attachment],
    budget: int,
) -> tuple[list[dict[str, object]], tuple[str, ...]]:
    shown = await files.shown("T1", turns, fresh, room_tokens=budget - estimate_tokens(SYSTEM))
    return prompt_window(SYSTEM, shown.turns, budget), shown.notes


# Text as people write it, in any script: Latin, CJK (3 UTF-8 bytes a character), emoji (4),
# accents, line ends; estimate_tokens counts bytes, so a document is measured in bytes too.
LINES = st.text(
    alphabet=st.sampled_from([*"ab z.\n", *"日本語のテキスト한국어", "😀", "🎉", "é", "ß"]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60_000), min_size=1, max_size=6),
    budget=st.integers(min_value=512, max_value=20_000),
    two_people=st.booleans(),
    line=LINES,
)
async def test_documents_stay_within_the_budget_and_the_question_is_never_cut(
    sizes: list[int], budget: int, two_people: bool, line: str
) -> None:
    unit = len(line.encode())
    docs = [document(f"F{n}", line * (size // unit)) for n, size in enumerate(sizes)]
    shelf = Shelf(*docs[:-1])
    turns: list[Turn] = []
    for n, doc in enumerate(docs[:-1]):
        author = "U2" if two_people and n % 2 else "U1"
        turns += [Turn("user", f"file {n}", author, files=(doc.file_id,)), Turn("assistant", "ok")]
    question = Turn("user", "what do they say?", "U1", files=(docs[-1].file_id,))
    messages, _ = await prompt(
        SharedFiles(shelf, Metrics()), [*turns, question], [docs[-1]], budget
    )

    assert tokens(messages) <= budget + 64
    newest = text_of(messages[-1])
    if newest.startswith('{"from":'):
        newest = json.loads(newest)["text"]
    assert newest.startswith("what do they say?\n\n<attachment ")
    assert newest.count("<attachment ") == newest.count("</attachment>") == 1
    assert "truncated to fit" not in newest  # cut by the files step, with its own note


async def test_a_japanese_document_keeps_the_history_its_closing_tag_and_its_cut_note() -> None:
    """3 UTF-8 bytes a character: measured in characters it took ~3× its room and pushed the
    thread's earlier turns (and its own end) out of the prompt."""
    text = "本日の会議では、来期の予算と採用計画について議論しました。\n" * 2000
    turns = [
        Turn("user", "先週の議事録はどこ?", "U1"),
        Turn("assistant", "共有フォルダにあります。"),
        Turn("user", "ありがとう", "U1"),
        Turn("assistant", "どういたしまして。"),
        Turn("user", "これを要約して", "U1"),
    ]
    messages, notes = await prompt(
        SharedFiles(Shelf(), Metrics()), turns, [document("F1", text)], 8000
    )
    assert [m["role"] for m in messages] == ["system", *(t.role for t in turns)]
    newest = text_of(messages[-1])
    assert newest.endswith("</attachment>") and "[cut here:" in newest
    assert tokens(messages) <= 8000
    assert notes and notes[0].startswith("F1.txt is long: only about ")


async def test_a_long_document_is_cut_with_a_note_and_the_person_is_told() -> None:
    long = document("F1", "word " * 40_000)
    messages, notes = await prompt(
        SharedFiles(Shelf(), Metrics()), [Turn("user", "sum up")], [long], 8000
    )
    assert "[cut here:" in text_of(messages[-1])
    assert notes == ("F1.txt is long: only about 6% of it fits in what I can read at once.",)


async def test_earlier_documents_are_read_again_by_id_and_the_newest_gets_more_room() -> None:
    old, new = document("F1", "old " * 20_000), document("F2", "new " * 20_000)
    shelf = Shelf(old, new)
    turns = [
        Turn("user", "first", "U1", files=("F1",)),
        Turn("assistant", "read it"),
        Turn("user", "second", "U1", files=("F2",)),
        Turn("assistant", "read that too"),
        Turn("user", "compare them", "U1"),
    ]
    messages, notes = await prompt(SharedFiles(shelf, Metrics()), turns, [], 8000)
    assert shelf.asked == [["F2"], ["F1"]] or shelf.asked == [["F1"], ["F2"]]
    first, second = (text_of(m) for m in messages if m["role"] == "user" and "<attach" in str(m))
    assert "old old" in first and "new new" in second
    assert len(second) > len(first)
    assert notes == ()  # nothing to tell about files shared earlier


async def test_images_are_sent_while_there_is_room_and_the_rest_are_named() -> None:
    shots = [image(f"F{n}") for n in range(5)]
    question = Turn("user", "which screen is broken?", "U1")
    messages, notes = await prompt(SharedFiles(Shelf(), Metrics()), [question], shots, 6000)
    content = messages[-1]["content"]
    assert isinstance(content, list)
    sent = [part for part in content if part["type"] == "image_url"]
    assert len(sent) == 3  # the rest of 6,000 tokens less 1,000 kept for words: 3 images
    assert content[0]["text"].startswith("which screen is broken?")
    assert content[0]["text"].count("not attached this time") == 5 - len(sent)
    assert notes == (
        f"I could look at only {len(sent)} of the images at once; "
        + ", ".join(f"F{n}.png" for n in range(len(sent), 5))
        + " didn't fit.",
    )
    assert tokens(messages) <= 6000


async def test_images_of_older_questions_are_named_not_sent() -> None:
    shelf = Shelf(image("F1"), image("F2"))
    turns = [
        Turn("user", "look", "U1", files=("F1",)),
        Turn("assistant", "a cat"),
        Turn("user", "and this", "U1", files=("F2",)),
        Turn("assistant", "a dog"),
        Turn("user", "which is cuter?", "U1"),
    ]
    messages, _ = await prompt(SharedFiles(shelf, Metrics(), image_turns=1), turns, [], 16_000)
    users = [m for m in messages if m["role"] == "user"]
    assert isinstance(users[1]["content"], list)  # one question back: sent again
    assert isinstance(users[0]["content"], str)  # two back: named only
    assert "F1.png" in users[0]["content"] and "not attached this time" in users[0]["content"]


def pdf(file_id: str, pages: int, *, note: str = "") -> Attachment:
    """A PDF read whole (its text, page marks as bot/files/documents.py writes them) and kept
    as itself (FILE_INPUT=native)."""
    text = "\n\n".join(f"--- page {n} ---\nRevenue in region {n}." for n in range(1, pages + 1))
    return Attachment(
        "document",
        file_id,
        f"{file_id}.pdf",
        "application/pdf",
        5000,
        text=text,
        data=b"%PDF-1.7 ...",
        data_mime="application/pdf",
        note=note,
    )


async def test_a_pdf_kept_as_itself_goes_as_a_file_part_when_it_fits_whole() -> None:
    messages, _ = await prompt(
        SharedFiles(Shelf(), Metrics()), [Turn("user", "sum up")], [pdf("F1", pages=2)], 8000
    )
    content = messages[-1]["content"]
    assert isinstance(content, list)
    assert content[1] == {
        "type": "file",
        "file": {"filename": "F1.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjcgLi4u"},
    }
    assert "(the file itself is attached)" in content[0]["text"]
    assert "Revenue in region 1." not in content[0]["text"]  # not twice
    assert tokens(messages) + 2 * PDF_PAGE_TOKENS <= 8000


async def test_a_pdf_too_long_for_its_room_or_not_read_whole_goes_as_text() -> None:
    for document in (pdf("F1", pages=6), pdf("F2", pages=2, note="Only the first 2 of 9 pages")):
        messages, _ = await prompt(
            SharedFiles(Shelf(), Metrics()), [Turn("user", "sum up")], [document], 8000
        )
        assert isinstance(messages[-1]["content"], str)
        assert "Revenue in region 2." in messages[-1]["content"]


async def test_notes_are_told_even_when_the_question_alone_fills_the_prompt() -> None:
    note = Attachment.unread(SlackFile("F1", name="a.zip"), "a.zip is an archive.")
    question = Turn("user", "x" * 40_000)
    _, notes = await prompt(SharedFiles(Shelf(), Metrics()), [question], [note], 2000)
    assert notes == ("a.zip is an archive.",)


async def test_a_questions_own_images_go_even_when_none_are_sent_again() -> None:
    question = Turn("user", "what is this?", "U1")
    messages, _ = await prompt(
        SharedFiles(Shelf(), Metrics(), image_turns=0), [question], [image("F1")], 8000
    )
    content = messages[-1]["content"]
    assert isinstance(content, list) and content[1]["type"] == "image_url"


def scan(file_id: str, pages: int) -> Attachment:
    """A scanned PDF kept as itself (FILE_INPUT=native): no words, only page marks."""
    return replace(pdf(file_id, pages=1), text=page_marks(pages))


async def test_a_scanned_pdf_goes_as_itself_or_is_named_when_too_long() -> None:
    short, long = scan("F1", pages=2), scan("F2", pages=12)
    messages, notes = await prompt(
        SharedFiles(Shelf(), Metrics()), [Turn("user", "read these")], [short, long], 16_000
    )
    content = messages[-1]["content"]
    assert isinstance(content, list)
    assert [part["type"] for part in content] == ["text", "file"]
    assert content[1]["file"]["filename"] == "F1.pdf"
    assert "(not read) F2.pdf is a scanned PDF too long" in content[0]["text"]
    assert notes == (
        "F2.pdf is a scanned PDF too long to send as it is (12 pages), so I couldn't read it.",
    )


async def test_only_the_images_that_will_be_sent_are_read_the_rest_named_from_the_turn() -> None:
    """30 earlier questions with a screenshot each, IMAGE_HISTORY_TURNS=3: three are read (a
    cache miss is files.info + download + decode, under the thread's lock), 27 named."""
    shots = [image(f"F{n}") for n in range(30)]
    notes = document("D1", "the error log")
    shelf = Shelf(*shots, notes)
    turns: list[Turn] = []
    for shot in shots:
        turns += [
            Turn(
                "user", "and now?", "U1", files=(shot.file_id,), images=((shot.file_id, shot.name),)
            ),
            Turn("assistant", "still broken"),
        ]
    turns[0] = replace(turns[0], files=("D1", "F0"))  # a document is still read, however old
    stored = [Turn.from_json(t.to_json()) for t in turns]  # as the store keeps them
    assert stored == turns
    messages, _ = await prompt(
        SharedFiles(shelf, Metrics(), image_turns=3),
        [*stored, Turn("user", "why?", "U1")],
        [],
        100_000,
    )
    assert sorted(i for asked in shelf.asked for i in asked) == ["D1", "F27", "F28", "F29"]
    sent = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    assert sum(p["type"] == "image_url" for p in sent) == 3
    named = "".join(text_of(m) for m in messages)
    assert named.count("(an image; not attached this time)") == 27
    assert 'name="F0.png"' in named and "the error log" in named
