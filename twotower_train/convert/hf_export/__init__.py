"""The modeling code of the Hugging Face two-tower export (a template copied into every export
folder by :func:`twotower_train.convert.two_tower.save_twotower_folder`).

``configuration_nemotron_twotower.py`` and ``moe_nemotron_twotower.py`` import only torch /
transformers and are importable from here;
``modeling_nemotron_twotower.py`` and ``mixers_nemotron_twotower.py`` import the export folder's
copies of the portable decoding modules (``from .samplers import …``) and so run only inside an
export folder, loaded by ``from_pretrained(..., trust_remote_code=True)``.
"""

from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent
MODELING_FILES: tuple[str, ...] = (
    "configuration_nemotron_twotower.py",
    "modeling_nemotron_twotower.py",
    "mixers_nemotron_twotower.py",
    "adaln_nemotron_twotower.py",
    "moe_nemotron_twotower.py",
)
