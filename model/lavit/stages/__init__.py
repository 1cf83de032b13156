"""LaVIT's training stages (paper §3.3) as trainer tasks; declared to the launcher by `model/lavit/family.py`.

    tokenizer      -> tokenizer.py      (stage 1a, Eq. 4)
    pixel_decoder  -> pixel_decoder.py  (stage 1b, Eq. 5)
    unified        -> unified.py        (stage 2, Eq. 6)
"""
