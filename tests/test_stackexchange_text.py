"""Text fidelity on real posts: each post below is read from the sample dumps by id, and its text must be what
a reader of the page sees, written out by hand from the post's HTML.

cardano.stackexchange.com is the 2021+ dump format (ContentLicense, CRLF), coffee.stackexchange.com the 2015
one. Neither dump holds LaTeX math; the dollar signs that MathJax would read ("$$", "$100") must stay as
written, which is what math needs from this step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from defusedxml.ElementTree import fromstring

from filters.normalize import normalize_text
from pipelines.core.config import load_config
from sources.stackexchange import StackExchangeSourceConfig, post_from_row
from sources.text import html_to_text, plain_text


@lru_cache(maxsize=None)
def _rows(path: str) -> dict[str, dict[str, str]]:
    rows = {}
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("<row"):
                attributes = fromstring(line).attrib
                rows[attributes["Id"]] = dict(attributes)
    return rows


def _post(shared_data: Path, site: str, post_id: str) -> dict[str, str]:
    return _rows(str(shared_data / "stackexchange" / f"{site}.stackexchange.com" / "Posts.xml"))[post_id]


CARDANO_BODIES = {
    # indented code in <pre><code>
    "4742": ("To connect to the Testnet with blockfrost-js initialize it like this:\n\n"
             "const API = new BlockFrostAPI({\n"
             "  projectId: 'YOURAPIKEYFORTESTNET',\n"
             "  isTestnet: true\n"
             "});"),
    # <li><p> items of an ordered list: the number on the item's line
    "341": ("1. What exactly is the 51% Attack?\n"
            "2. How hard would it be to accomplish this attack?\n"
            "3. How easy is it to overcome the attack should it actually occur?"),
    # a block quote
    "4684": ("Apparently there is a problem with the size of your transaction, which is: 19142\n\n"
             "But there is a limit, you can find it on the protocol-params file:\n\n"
             "> maxTxSize: 16384 bytes\n\n"
             "Try to modify it, to decrease the size of the transaction."),
    # an image with a real alt text
    "3612": ("I have a very simple question that I can't seem to get clarification on. When opening a wallet on "
             "Yoroi it shows the pool you are delegating to if you are delegating to a pool. The pool has a "
             "default icon (See screenshot below) How do stake pool operators change the icon to a custom "
             "icon?\n\nAXNSA - Yoroi Icon"),
    # an image with the stock alt text only
    "900": "Go to the Receive tab to select an address.",
    # a table (with <br> inside cells and an empty cell)
    "766": ("Feel free to improve! :)\n\n"
            "technical aspect | Cardano | Ethereum | notes\n"
            "model | eUTxO-based | account-based | see cardano lecture, see question, ...\n"
            "smart contract code location | not stored on-chain, but shipped with transaction | "
            "stored on-chain ? |\n"
            "smart contract maximum count | unlimited | limited ? | see question\n"
            "access third party contract e.g. an oracle | import and use lib (required or just helpful?), , "
            "compile your own contract, ship third party validator script with transaction, ... | "
            "call it via an address ? | see question\n"
            "... | ... | ... | ..."),
    # nested lists
    "2025": ("Every transaction needs to include at least 1 ADA (See: Is there a minimum amount of ADA I can send "
             "in a transaction?).\n\n"
             "I want to send a native token to someone else, but I don't want to send them the 1 ADA.\n\n"
             "Let's say we have the following wallets (TokenX is a native token or NFT):\n\n"
             "- WalletA:\n  - UTxO: 2 ADA\n  - UTxO: 1 TokenX\n- Wallet B:\n  - UTxO: 10 ADA\n\n"
             "WalletA wants to send 1 TokenX to WalletB. Can I construct a transaction where I send 1 TokenX to "
             "WalletB and 1 ADA to my own WalletA address?\n\n"
             "The end result would look like this (ignoring transaction fees for simplicity):\n\n"
             "- WalletA:\n  - UTxO: 2 ADA\n- Wallet B:\n  - UTxO: 10 ADA\n  - UTxO: 1 TokenX\n\n"
             "How can this be done and is this possible in Yoroi or Daedalus?"),
    # ordered lists split by code blocks (<ol start="2">), code with a double space and quotes kept
    "3869": ("Given the slot lenght is one second, this is pretty easy.\n\n"
             "1. Find the current slot number.\n\n"
             "$ curl -s  -H \"project_id: $BLOCKFROST_PROJECT_ID\" "
             "https://cardano-mainnet.blockfrost.io/api/v0/blocks/latest | jq .slot\n"
             "40664369\n\n"
             "2. Add 6 months to it (roughly)\n\n"
             "$ expr 40664369 + $((60*60*24*30*6))\n"
             "56216369"),
    # a line break in the HTML source is a space on the page; "$$" (math delimiters) kept as written
    "1972": ("This is part of Template Haskell. It is the way to have Haskell compiled at runtime basically.\n\n"
             "This link may help https://downloads.haskell.org/~ghc/7.8.4/docs/html/users_guide/"
             "template-haskell.html\n\n"
             "$$ is considered a typed expression splice. It also talks about [|| ... ||] which is a typed "
             "expression quotation."),
}

COFFEE_BODIES = {
    # an inline image with alt text, set apart from the words around it
    "39": "When I bought my aeropress, it came with this weird hexagon thingy: hexagon thingy\n\nWhat is it for?",
    "52": ("Coffee flavor is often described in terms of:\n\n"
           "1. Roast darkness (light to dark)\n2. Body (medium to heavy)\n3. Acidity (smooth to bright)\n\n"
           "I have a vague understanding of some of these, but am unclear especially on body. Could someone "
           "explain these a bit and show how they differ from one another?"),
    # ASCII art in a code block: every leading and inner space kept, entities resolved
    "142": None,  # checked line by line below
    "147": ("My question is as simple as it sounds. I want to know which ingredient in coffee makes me poop.\n\n"
            "I'm sure everyone has experienced it. You drink a (couple) cup(s) of coffee and a few minutes later "
            "you'll find yourself rushing to the toilet. I personally don't drink a lot of coffee. I drink one "
            "cup a day (only from We. to Fr.) and occasionally a cup on Weekends.\n\n"
            "What ingredient causes this laxative effect?\n\n"
            "- Is it the caffeine?\n  - If so, why doesn't energy drinks have a similar effect?\n"
            "- Is it something out of the coffee bean itself?\n"
            "- Do only special types of coffee (bean) have this laxative effect?\n\n"
            "I tried googling a bit, but haven't found a meaningful answer. Seems like scientists can't agree "
            "which ingredient causes it or whether it's even scientifically proven that coffee has a laxative "
            "effect."),
    "217": "A friend gave me an Indian coffee maker, which looks like this:\n\n"
           "It did not come with instructions - how do I use it?",
    "374": ("Questions with this tag should still be about coffee, in keeping with the spirit of this site. "
            "Chances are, few questions with this tag will be appropriate for the site, so ensure that your "
            "question belongs here before posting.\n\n"
            "accident [noun]\n\n"
            "1. An unfortunate incident that happens unexpectedly and unintentionally, typically resulting in "
            "damage or injury.\n"
            "2. An event that happens by chance or that is without apparent or deliberate cause.\n\n"
            "Accidents happen. Coffee accidents happen. Use this tag to ask questions about the prevention or "
            "ramifications of coffee-related disasters."),
    "406": ("Yes, the term is an oxymoron.\n\n"
            "Miriam Webster agrees with your definition of brewing involving hot water:\n\n"
            "> to prepare (as tea) by infusion in hot water\n\n"
            "That is why the word cold is used as a qualifier to show that it is done with cold water rather "
            "than hot water."),
}

COFFEE_142_DIAGRAM = [
    "    ||||||     < Tamper",
    "| [||||||||] | < Tamper 'head' flush with portafilter edge (note, it's flush)",
    "| .......... | < Tamped coffee",
    "| .......... |",
    "+------------+",
    "    /    \\     < Goodness pours out here",
]


def _stackexchange_normalize():
    config, _ = load_config("stackexchange", StackExchangeSourceConfig, None, [])
    return config.normalize


@pytest.mark.parametrize("post_id", sorted(CARDANO_BODIES))
def test_cardano_2021_format_bodies_read_as_the_page_shows(shared_data, post_id):
    row = _post(shared_data, "cardano", post_id)
    text = html_to_text(row["Body"])
    assert text == CARDANO_BODIES[post_id]
    # normalize (with the StackExchange configuration) leaves the reader's text as it is
    assert normalize_text(text, _stackexchange_normalize()) == text


@pytest.mark.parametrize("post_id", sorted(COFFEE_BODIES))
def test_coffee_2015_format_bodies_read_as_the_page_shows(shared_data, post_id):
    row = _post(shared_data, "coffee", post_id)
    text = html_to_text(row["Body"])
    if post_id == "142":
        lines = text.split("\n")
        start = lines.index(COFFEE_142_DIAGRAM[0])
        assert lines[start:start + len(COFFEE_142_DIAGRAM)] == COFFEE_142_DIAGRAM
        assert lines[start - 2:start] == ["A crude diagram:", ""]
    else:
        assert text == COFFEE_BODIES[post_id]
    assert normalize_text(text, _stackexchange_normalize()) == text


def test_titles_are_plain_text_never_html(shared_data):
    row = _post(shared_data, "cardano", "3734")
    post = post_from_row(row, "cardano.stackexchange.com", "cardano.stackexchange.com/Posts.xml")
    assert post["title"] == "cardano-cli: Network.Socket.connect: <socket: 11>: does not exist"
    assert plain_text("Why does the  <img> tag\tvanish?") == "Why does the <img> tag vanish?"
    assert plain_text(_post(shared_data, "coffee", "125")["Title"]) == (
        "What differentiates a $100 coffee machine from a $1000 coffee machine?")
    # the same post's body: the code's &lt; &gt; are text, and the stock alt text is gone but real ones stay
    body = post["body"]
    assert "cardano-cli: Network.Socket.connect: <socket: 11>: does not exist (No such file or directory)" in body
    assert "my two ubuntu terminals" in body and "windows store" in body
    assert "enter image description here" not in body


def test_stock_alt_text_never_glued_to_the_next_word():
    text = html_to_text('<p><a href="x"><img src="y" alt="enter image description here"></a>It is</p>'
                        '<p>See<img src="z" alt="the chart">below</p>')
    assert text == "It is\n\nSee the chart below"


def test_code_first_line_indentation_survives_reader_and_normalize():
    text = html_to_text("<pre><code>    indented first\n  second\n\n\n    after two blank lines\n</code></pre>")
    assert text == "    indented first\n  second\n\n\n    after two blank lines"
    assert normalize_text(text, _stackexchange_normalize()) == text


def test_collapsing_normalize_of_other_sources_is_unchanged():
    from pipelines.core.config import NormalizeConfig

    assert normalize_text("  a  b \n\n\n\n c\t d  ", NormalizeConfig()) == "a b\n\nc d"
