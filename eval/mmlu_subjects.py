"""MMLU's 57 subjects in lm-eval's four categories, and the names of the local MMLU tasks (`eval/mmlu.py` writes and
runs them; `eval/lm_adapter.py`'s --help lists them). Plain data, below both.

Categories: lm-eval's grouping, which follows the subject table of the MMLU paper (Hendrycks et al. 2021): STEM 19,
Humanities 13, Social Sciences 12, Other 13.
"""

from __future__ import annotations

TASK_PREFIX = "mmlu_local"
CATEGORY_NAMES = {"stem": "STEM", "humanities": "Humanities", "social_sciences": "Social Sciences", "other": "Other"}

# Subject -> category, as in lm-eval's tasks/mmlu/default (the MMLU paper's subject table).
SUBJECT_CATEGORY: dict[str, str] = {
    **{s: "humanities" for s in (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
        "prehistory", "professional_law", "world_religions",
    )},
    **{s: "social_sciences" for s in (
        "econometrics", "high_school_geography", "high_school_government_and_politics", "high_school_macroeconomics",
        "high_school_microeconomics", "high_school_psychology", "human_sexuality", "professional_psychology",
        "public_relations", "security_studies", "sociology", "us_foreign_policy",
    )},
    **{s: "stem" for s in (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
        "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning",
    )},
    **{s: "other" for s in (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    )},
}
