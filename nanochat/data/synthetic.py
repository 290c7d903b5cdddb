"""Synthetic chat data for the demo model: who it is, and how to use the calculator tool.

`synthetic_conversations(seed)` gives three kinds of conversations, deterministically from the seed:
- identity: a user asks who the assistant is, what it can do, how big it is, whether it is ChatGPT, or
  just says hello (many paraphrases, with and without a greeting, in several casings); the assistant
  answers from templates that say it is nanochat, a tiny demo chat model (about 2 million parameters)
  served by this repository, what it can do and what it cannot;
- small talk: questions that are not about the assistant ("Do you like chess?", "What is the capital of
  Spain?", "How do I learn to swim?") with short answers that do not introduce it, so that a tiny model
  learns when an introduction is the answer and does not give it to everything;
- tool use: "What is 17*23?" and other phrasings ("Compute 17*23", "17 plus 23?") with 1 to 3 digit
  operands and +, -, *; the assistant's turn is nanochat's tool-use parts: python `17*23`, python_output
  from `nanochat.calculator`, then text `17*23 = 391` (the shape of `arithmetic_task`'s reference).

What the evaluation holds out is defined here too, so that training never sees it:
`HELDOUT_IDENTITY_PROMPTS` (other wordings than any training prompt), `HELDOUT_OTHER_PROMPTS` (questions
not about the assistant, none of them a small-talk prompt) and `heldout_arithmetic` (the
report's arithmetic questions, whose expressions the tool-use generator skips).

It deliberately needs no network and no files, and knows nothing about tokenization.
"""

from __future__ import annotations

import random
from typing import Any

from nanochat.calculator import evaluate as calculator_evaluate
from nanochat.eval.tasks import Task, arithmetic_task

NAME = "nanochat"  # what an identity reply must say; the identity score looks for it
IDENTITY_CONVERSATIONS = 600
SMALL_TALK_CONVERSATIONS = 600
TOOL_USE_CONVERSATIONS = 6000
HELDOUT_ARITHMETIC_QUESTIONS = 50

# Training questions by intent; each intent has its own answers below.
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "who": (
        "Who are you?", "What are you?", "What is your name?", "What's your name?", "Do you have a name?",
        "Tell me your name.", "Introduce yourself.", "Who is this?", "Who am I chatting with?",
        "What do you call yourself?", "Who are you, exactly?", "What should I know about you?",
        "Tell me about you.", "Can you introduce yourself?", "What is this chatbot?", "What model are you?",
        "Hello, who are you?", "Hi, who are you?", "Hey, what's your name?", "Your name, please?",
    ),
    "greeting": (
        "Hello", "Hello!", "Hi", "Hi!", "Hey", "Hey there!", "Good morning!", "Good afternoon!",
        "Hello there", "Hi there!", "Greetings!", "Yo!", "Hiya", "Morning!", "Hello, nice to meet you.",
    ),
    "abilities": (
        "What can you do?", "How can you help me?", "What are you good at?", "What can I ask you?",
        "What are you for?", "Can you do math?", "Can you help me with arithmetic?", "What do you do?",
        "What are your skills?", "Are you useful?", "What kind of questions can you answer?",
    ),
    "size": (
        "How big are you?", "How many parameters do you have?", "Are you a large language model?",
        "How large is your model?", "Are you big?", "Are you smart?", "How clever are you?",
        "How small are you?", "What size are you?", "Are you a big model?",
    ),
    "other": (
        "Are you ChatGPT?", "Are you GPT-4?", "Are you Siri?", "Are you Claude?", "Are you Gemini?",
        "Are you human?", "Are you a person?", "Are you a robot?", "Are you a real person?",
        "Are you an AI?", "Are you Alexa?", "Is this ChatGPT?",
    ),
    "origin": (
        "Who made you?", "Who created you?", "Who built you?", "Where do you come from?",
        "Where are you running?", "How were you trained?", "What are you made of?", "Who trained you?",
    ),
    "limits": (
        "What are your limits?", "Do you make mistakes?", "Can I trust your answers?",
        "What can't you do?", "Do you know everything?", "Are you always right?",
    ),
}  # fmt: skip

_ANSWERS: dict[str, tuple[str, ...]] = {
    "who": (
        "I am nanochat, a tiny demo chat model served by this repo.",
        "I'm nanochat, a very small chat model with about 2 million parameters.",
        "My name is nanochat. I am a tiny demo chat model.",
        "I am nanochat. I can chat a little and do simple arithmetic with a calculator tool.",
    ),
    "greeting": (
        "Hello! I am nanochat, a tiny chat model. How can I help?",
        "Hi! I'm nanochat. Ask me a question or some simple arithmetic.",
        "Hello! I am nanochat, a small demo model. What would you like to talk about?",
    ),
    "abilities": (
        "I am nanochat. I can chat a little and do simple arithmetic with a calculator tool.",
        "I'm nanochat, a tiny model: I can make small talk and add, subtract or multiply numbers with my "
        "calculator tool.",
        "I am nanochat. Ask me something like 'What is 17*23?' and I will use my calculator.",
    ),
    "size": (
        "I am nanochat, a tiny model with about 2 million parameters, so I am not very clever.",
        "I'm nanochat, and I'm tiny: about 2 million parameters and a short context.",
        "I am nanochat, a demo model of about 2 million parameters, far smaller than the big chat models.",
    ),
    "other": (
        "No, I am nanochat, a tiny demo chat model served by this repo.",
        "No. I'm nanochat, a small chat model with about 2 million parameters.",
        "No, I am nanochat: a very small program, not a person and not a big assistant.",
    ),
    "origin": (
        "I am nanochat. I was trained on a CPU from public domain books and short dialogs, and this repo "
        "serves me.",
        "I'm nanochat, a demo model trained in a few minutes by `make demo-model` in this repo.",
    ),
    "limits": (
        "I am nanochat, a tiny model, so I often get things wrong. Please check what I say.",
        "I'm nanochat, and I make many mistakes: I am only about 2 million parameters.",
        "I am nanochat. I know very little, but I can do simple arithmetic with a calculator tool.",
    ),
}

_GREETINGS = ("", "", "Hi! ", "Hello, ", "Hey, ", "Hi there. ", "Good morning! ")

# Held out from training: other wordings, for the identity score (see `check_heldout_disjoint`).
HELDOUT_IDENTITY_PROMPTS: tuple[str, ...] = (
    "Could you tell me who you are?", "Who am I talking to right now?", "What should I call you?",
    "Please introduce yourself briefly.", "Tell me a bit about yourself.", "What kind of assistant are you?",
    "Which chatbot is this?", "Are you a person or a program?", "What is your model called?",
    "Good evening! Who's there?", "Howdy! What are you?", "Greetings. Who are you exactly?",
    "How many weights do you have?", "Are you OpenAI's model?", "Who wrote you?",
    "What are you able to do?", "Can you describe yourself?", "Hey! Who am I speaking with?",
    "What is your identity?", "Say your name.", "Are you some kind of bot?", "Hi, what is this program?",
)  # fmt: skip

# Held out too, and not about the assistant: a reply to these should not be an introduction. The share that
# says NAME anyway measures how far the identity answers spill over onto everything else.
HELDOUT_OTHER_PROMPTS: tuple[str, ...] = (
    "What is your favorite food?", "Tell me a funny story.", "Do you like music?",
    "What is the capital of France?", "Can you recommend a good book?", "Is it going to rain tomorrow?",
    "What do you think about cats?", "Do you play any sports?", "Why is the sky blue?",
    "What should I cook for dinner?", "Do you like movies?",
    "What is the meaning of life?", "How do I learn to program?", "Where is the nearest library?",
    "What is your favorite color?", "Have you been to the sea?", "What did you eat today?",
    "Can you sing a song?", "Which season do you like best?", "How do plants grow?",
)  # fmt: skip

# Small talk: (question templates, answer templates) by shape; {x} is a topic, {X} the same capitalised.
_TOPICS = (
    "chess",
    "jazz",
    "football",
    "tea",
    "coffee",
    "trains",
    "rain",
    "snow",
    "poetry",
    "painting",
    "history",
    "gardening",
    "mountains",
    "birds",
    "dogs",
    "horses",
    "the ocean",
    "the stars",
    "summer",
    "winter",
    "pizza",
    "bread",
    "cheese",
    "dancing",
    "swimming",
    "running",
    "old books",
    "puzzles",
    "the moon",
    "bicycles",
    "rivers",
    "autumn",
    "soup",
    "apples",
    "science",
    "maths",
    "the piano",
    "the guitar",
)
_SMALL_TALK: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("Do you like {x}?", "Do you enjoy {x}?", "Are you a fan of {x}?", "How do you feel about {x}?"),
        ("I like {x}. What about you?", "Yes, {x} is lovely.", "{X} is nice. Many people love it."),
    ),
    (
        ("What do you think about {x}?", "What do you think of {x}?", "Is {x} good?", "Tell me about {x}."),
        ("{X} is interesting. There is always more to learn about it.", "I think {x} is great.",
         "{X} is a big subject, and I only know a little about it."),
    ),
    (
        ("Why do people like {x}?", "Why is {x} popular?", "What is so special about {x}?"),
        ("People like {x} because it makes them happy.", "Many people find {x} relaxing and fun."),
    ),
    (
        ("Have you ever tried {x}?", "Did you ever see {x}?", "When did you last think about {x}?"),
        ("No, but I would like to.", "Not really. Have you?"),
    ),
)  # fmt: skip
_FAVOURITES = (
    ("animal", "cats"), ("song", "happy songs"), ("book", "short stories"), ("sport", "tennis"),
    ("fruit", "apples"), ("drink", "tea"), ("game", "chess"), ("city", "Paris"), ("flower", "roses"),
    ("number", "seven"), ("day", "Sunday"), ("movie", "old comedies"), ("bird", "the robin"),
)  # fmt: skip
_CAPITALS = (
    ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Chile", "Santiago"),
)  # fmt: skip
_HOW_TO = (
    "learn to swim", "bake bread", "grow tomatoes", "play chess", "get better at maths", "sleep better",
    "write a poem", "make tea", "learn a language", "start running", "draw a cat", "save money",
)  # fmt: skip
_HOW_TO_ANSWERS = (
    "Start small, practise a little every day, and ask someone who knows for help.",
    "Begin with the basics, be patient, and keep practising.",
    "A good book or a teacher helps. Then practise often.",
)
_SOCIAL = (
    (("How are you?", "How are you today?", "How is your day going?", "How's it going?"),
     ("I am fine, thank you. How are you?", "Very well, thanks! And you?")),
    (("Thank you!", "Thanks!", "Thanks a lot.", "Thank you very much."),
     ("You're welcome!", "Happy to help.")),
    (("Goodbye!", "Bye!", "See you later.", "Good night!"), ("Goodbye! Have a nice day.", "Bye! Take care.")),
)  # fmt: skip

_OPERATOR_WORDS = {"+": ("plus", "added to"), "-": ("minus",), "*": ("times", "multiplied by")}
# (template, weight): "What is 37*12?" is the evaluation's phrasing, so it comes most often.
_ARITHMETIC_PROMPTS = (
    ("What is {a}{op}{b}?", 8),
    ("What is {a} {op} {b}?", 3),
    ("What's {a}{op}{b}?", 2),
    ("Compute {a}{op}{b}", 2),
    ("Calculate {a} {op} {b}.", 2),
    ("{a} {word} {b}?", 2),
    ("What is {a} {word} {b}?", 2),
    ("How much is {a} {word} {b}?", 1),
    ("{a}{op}{b}=?", 1),
    ("{a}{op}{b}", 1),
)
_DIGITS_WEIGHTS = ((1, 1), (2, 2), (3, 2))  # operand length in digits, weight


def identity_prompts() -> list[str]:
    """Every training identity prompt (each intent's questions, with and without a greeting, as written
    and lower-cased without the final '?'); the held-out prompts are none of them."""
    return [variant for questions in _QUESTIONS.values() for q in questions for variant in _variants(q)]


def identity_conversations(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` identity conversations: every question once, as written, then random variants."""
    pairs = [(intent, q) for intent, questions in _QUESTIONS.items() for q in questions]
    conversations = []
    for index in range(n):
        intent, question = pairs[index] if index < len(pairs) else rng.choice(pairs)
        prompt = question if index < len(pairs) else rng.choice(_variants(question))
        answer = rng.choice(_ANSWERS[intent])
        conversations.append(_conversation(prompt, answer))
    return conversations


def small_talk_conversations(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` conversations about other things than the assistant; no reply says NAME."""
    makers = (_topic_talk, _favourite_talk, _capital_talk, _how_to_talk, _social_talk)
    held_out = {normalize_prompt(p) for p in HELDOUT_OTHER_PROMPTS}
    conversations = []
    while len(conversations) < n:
        prompt, answer = rng.choice(makers)(rng)
        if normalize_prompt(prompt) not in held_out:
            conversations.append(_conversation(prompt, answer))
    return conversations


def tool_use_conversations(n: int, rng: random.Random, exclude: set[str]) -> list[dict[str, Any]]:
    """`n` calculator conversations with 1 to 3 digit operands, none of whose expressions is in `exclude`
    (as "37*12")."""
    templates = [template for template, weight in _ARITHMETIC_PROMPTS for _ in range(weight)]
    digits = [length for length, weight in _DIGITS_WEIGHTS for _ in range(weight)]
    conversations = []
    while len(conversations) < n:
        a, b = _operand(rng, rng.choice(digits)), _operand(rng, rng.choice(digits))
        op = rng.choice(sorted(_OPERATOR_WORDS))
        expression = f"{a}{op}{b}"
        if expression in exclude:
            continue
        result = calculator_evaluate(expression)
        assert result is not None, expression  # ints and + - * always evaluate
        prompt = rng.choice(templates).format(a=a, b=b, op=op, word=rng.choice(_OPERATOR_WORDS[op]))
        parts = [
            {"type": "python", "text": expression},
            {"type": "python_output", "text": result},
            {"type": "text", "text": f"{expression} = {result}"},
        ]
        conversations.append(_conversation(prompt, parts))
    return conversations


def heldout_arithmetic(n: int = HELDOUT_ARITHMETIC_QUESTIONS) -> dict[str, list[Task]]:
    """The report's arithmetic questions, by name: operands 1-100 (the original task) and 2-3 digits."""
    return {
        "arithmetic (calculator tool)": arithmetic_task(n, seed=0),
        "arithmetic, 2-3 digit operands (calculator tool)": arithmetic_task(
            n, seed=1, min_value=10, max_value=999
        ),
    }


def synthetic_conversations(
    seed: int = 0,
    identity: int = IDENTITY_CONVERSATIONS,
    tool_use: int = TOOL_USE_CONVERSATIONS,
    small_talk: int = SMALL_TALK_CONVERSATIONS,
) -> dict[str, list[dict[str, Any]]]:
    """{"identity": [...], "small_talk": [...], "tool_use": [...]} conversations, the same for the same
    arguments."""
    rng = random.Random(seed)
    exclude = {task.reference[0]["text"] for tasks in heldout_arithmetic().values() for task in tasks}
    return {
        "identity": identity_conversations(identity, rng),
        "small_talk": small_talk_conversations(small_talk, rng),
        "tool_use": tool_use_conversations(tool_use, rng, exclude),
    }


def normalize_prompt(text: str) -> str:
    """A prompt compared without case, spaces or final punctuation: "Who are you?" ~ "who are you"."""
    return " ".join(text.casefold().split()).rstrip("?!. ")


def _topic_talk(rng: random.Random) -> tuple[str, str]:
    questions, answers = rng.choice(_SMALL_TALK)
    topic = rng.choice(_TOPICS)
    fill = {"x": topic, "X": topic[0].upper() + topic[1:]}
    return rng.choice(questions).format(**fill), rng.choice(answers).format(**fill)


def _favourite_talk(rng: random.Random) -> tuple[str, str]:
    kind, liked = rng.choice(_FAVOURITES)
    question = rng.choice(
        ("What is your favorite {k}?", "What's your favourite {k}?", "Which {k} do you like?")
    )
    return question.format(k=kind), rng.choice(("I like {v} best.", "Probably {v}.")).format(v=liked)


def _capital_talk(rng: random.Random) -> tuple[str, str]:
    country, capital = rng.choice(_CAPITALS)
    question = rng.choice(("What is the capital of {c}?", "What's the capital city of {c}?"))
    return question.format(c=country), f"The capital of {country} is {capital}."


def _how_to_talk(rng: random.Random) -> tuple[str, str]:
    question = rng.choice(("How do I {t}?", "How can I {t}?", "Any tips to {t}?"))
    return question.format(t=rng.choice(_HOW_TO)), rng.choice(_HOW_TO_ANSWERS)


def _social_talk(rng: random.Random) -> tuple[str, str]:
    questions, answers = rng.choice(_SOCIAL)
    return rng.choice(questions), rng.choice(answers)


def _variants(question: str) -> list[str]:
    with_greeting = [greeting + question for greeting in _GREETINGS if greeting]
    return [question, question.lower().rstrip("?"), *with_greeting]


def _conversation(prompt: str, reply: str | list[dict[str, str]]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
