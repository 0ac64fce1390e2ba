"""A small labelled set for the memory search: 40 facts of one user, 14 questions, and for each
question the facts that answer it. Written for this project (no public data set).

The questions are phrased as a user would ask them, not built from the facts' words; a few
share no word with their answer ("Which pets?" / "cat named Miso"), which a bag-of-words
embedding (the fake provider's ``fake/embed``) cannot find and a real embeddings model can.
"""

from __future__ import annotations

FACTS: list[str] = [
    "I am allergic to peanuts and tree nuts.",  # 0
    "I am vegetarian but I eat eggs.",  # 1
    "My favourite cuisine is Sichuan food, the spicier the better.",  # 2
    "I drink my coffee black with no sugar.",  # 3
    "I live in Sai Ying Pun on Hong Kong Island.",  # 4
    "I work as a data engineer at a logistics company.",  # 5
    "My manager is called Priya.",  # 6
    "I usually start work at 9:30 and finish at 18:00.",  # 7
    "My daughter Mei is seven years old.",  # 8
    "Mei takes violin lessons on Saturday mornings.",  # 9
    "My son Kai is four and goes to kindergarten in Kennedy Town.",  # 10
    "My wife is a paediatric nurse at Queen Mary Hospital.",  # 11
    "We have a cat named Miso.",  # 12
    "I run 10 kilometres along the harbour three times a week.",  # 13
    "I am training for the Hong Kong marathon in February.",  # 14
    "I prefer aisle seats on flights.",  # 15
    "I fly Cathay Pacific and collect Asia Miles.",  # 16
    "My passport expires in March 2028.",  # 17
    "I am learning Japanese and I am at JLPT N4 level.",  # 18
    "Next spring we plan a family trip to Kyoto.",  # 19
    "I speak Cantonese, English and some Mandarin.",  # 20
    "My birthday is on the 14th of August.",  # 21
    "I do not drink alcohol.",  # 22
    "I read mostly science fiction; Liu Cixin is my favourite author.",  # 23
    "I play badminton with colleagues on Wednesday evenings.",  # 24
    "My dentist appointment is every six months at a clinic in Central.",  # 25
    "I take the MTR Island Line to work.",  # 26
    "I use a standing desk and have lower back pain when I sit too long.",  # 27
    "I prefer email to phone calls for work questions.",  # 28
    "I save 20 percent of my salary each month.",  # 29
    "I want to buy a flat in the New Territories within five years.",  # 30
    "My laptop is a ThinkPad running Linux.",  # 31
    "I write most of my code in Python and SQL.",  # 32
    "I am afraid of heights.",  # 33
    "I volunteer at a food bank one Sunday a month.",  # 34
    "My mother lives in Guangzhou and I visit her every other month.",  # 35
    "I am lactose intolerant, so no milk in my dishes.",  # 36
    "I go to bed around 23:00 and wake up at 6:30.",  # 37
    "My favourite film is In the Mood for Love.",  # 38
    "I have a red belt in taekwondo from when I was a teenager.",  # 39
]

# (question, indexes of the facts that answer it)
QUERIES: list[tuple[str, set[int]]] = [
    ("Does the user have any food allergies or intolerances?", {0, 36}),
    ("What should I not put in a dish for this user? peanuts or milk?", {0, 36}),
    ("How does the user take their coffee?", {3}),
    ("Where does the user live?", {4}),
    ("What is the user's job?", {5}),
    ("When are Mei's violin lessons?", {9}),
    ("How old are the user's kids, Mei and Kai?", {8, 10}),
    ("Which pets does the family have?", {12}),
    ("Is the user training for a marathon or other running?", {13, 14}),
    ("Which seat should I book on the flight?", {15}),
    ("Which airline and miles programme does the user use?", {16}),
    ("When does the passport expire?", {17}),
    ("What languages does the user speak or learn?", {18, 20}),
    ("Can I offer the user a glass of wine?", {22}),
]


def recall_at(k: int, ranked: list[list[int]]) -> float:
    """Mean over the questions of the share of their answering facts in the top ``k``."""
    total = 0.0
    for (_, relevant), found in zip(QUERIES, ranked, strict=True):
        total += len(relevant & set(found[:k])) / len(relevant)
    return total / len(QUERIES)
