"""The lm-evaluation-harness model ``twotower``.

Importing this module registers it; ``python -m twotower_train.eval`` is the ``lm-eval`` command
line with it registered::

    python -m twotower_train.eval run --model twotower \\
        --model_args pretrained=runs/demo/stage2/checkpoints,scorer=mock_ar,sampler=mask_diffusion \\
        --tasks twotower_tiny_mc --include_path tests/eval/tasks

``model_args``:

* ``pretrained`` — a two-tower trainer checkpoint or a Hugging Face export folder;
  ``tokenizer`` — optional tokenizer folder (default: the run's / the export's);
* ``scorer`` — ``ar`` (context tower, exact; default) or ``mock_ar`` (the released mock-AR's
  scores: the unmodulated denoiser on each previous token with the context cache one position
  short, one denoiser forward per batch; :func:`~twotower_train.eval.scoring.score_mock_ar`)
  for ``loglikelihood`` and ``loglikelihood_rolling``;
* ``sampler`` — ``mask_diffusion`` (default) | ``mock_ar`` | ``ar`` | ``speculative`` for
  ``generate_until``, with that mode's knobs (``block_size``, ``steps_per_block``,
  ``confidence_threshold``; :mod:`twotower_train.inference.modes`);
  mask diffusion's ``block_size`` and ``steps_per_block`` default to the block size the model
  trained at (``LoadedModel.block_size``), as in ``twotower-generate``;
* ``batch_size`` (lm-eval's ``--batch_size``), ``max_length``, ``max_gen_toks`` (default 256);
* placement: lm-eval's ``--device`` (the model), ``denoiser_device`` (the denoiser apart),
  ``context_only=true`` (only the context tower is read and placed: ``scorer=ar``,
  ``sampler=ar``).

``generate_until`` decodes left-padded batches; a row ends at EOS, at ``max_gen_toks`` or when a
stop sequence appears in its text (checked after every committed block), and its text is cut
before the first stop sequence. Request-level ``temperature``/``top_k``/``top_p``/``do_sample``
set the token choice.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from twotower_train.errors import UserError
from twotower_train.eval.scoring import score_ar, score_mock_ar
from twotower_train.inference import modes
from twotower_train.inference.load import LoadedModel, load_for_decoding, place

SCORERS = ("ar", "mock_ar")
REQUEST_KNOBS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


LM_EVAL_DEFAULT_DEVICE = "cuda:0"
"""What lm-eval 0.4 passes as ``device`` when ``--device`` is not given (its EvaluatorConfig
default) — on a CPU-only host that means "no choice made", not a request for CUDA."""


@register_model("twotower")
class TwoTowerLM(TemplateLM):
    """lm-eval model over any DecodingModel (module docstring)."""

    def __init__(
        self,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        scorer: str = "ar",
        sampler: str = "mask_diffusion",
        batch_size: int | str = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        loaded: LoadedModel | None = None,
        device: str | None = None,
        denoiser_device: str | None = None,
        context_only: bool | str = False,
        max_batch_size: int | None = None,
        **knobs: Any,
    ):
        """``loaded`` passes an already-loaded model (programmatic use); ``device`` (lm-eval's
        ``--device``) is where the model goes (default: where it loads, ``distributed.device()``
        / the export's placement), ``denoiser_device`` the denoiser instead (the towers apart,
        ``place_towers_on_devices``), ``context_only`` (``true``) reads and places only the
        context tower (``scorer=ar`` and ``sampler=ar`` alone; :func:`load_for_decoding`);
        ``max_batch_size`` is lm-eval's too: batches are ``batch_size``."""
        super().__init__()
        if (pretrained is None) == (loaded is None):
            raise UserError("twotower: give model_args pretrained=<checkpoint or export folder>")
        if scorer not in SCORERS:
            raise UserError(f"twotower: scorer={scorer!r}; choose one of {', '.join(SCORERS)}")
        if not str(batch_size).isdigit() or int(batch_size) <= 0:
            raise UserError(f"twotower: batch_size={batch_size!r} must be a positive integer")
        if device == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            device = None  # lm-eval's own default, not the user's choice: place as loaded
        context_only = _flag("context_only", context_only)
        if context_only and (scorer, sampler) != ("ar", "ar"):
            raise UserError(
                "twotower: context_only=true loads no denoiser; use it with scorer=ar and "
                f"sampler=ar (not scorer={scorer}, sampler={sampler})"
            )
        placement = {"device": device, "denoiser_device": denoiser_device}
        if loaded is None:
            loaded = load_for_decoding(
                pretrained, tokenizer, **placement, context_only=context_only
            )
        else:
            loaded.model = place(loaded.model, **placement, context_only=context_only)
        self.loaded = loaded
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        self.scorer, self.sampler = scorer, sampler
        self.knobs = knobs
        self.batch_size = int(batch_size)
        self._max_length = int(max_length or self.loaded.max_length)
        self.max_gen_toks = int(max_gen_toks)
        # Checked now (a bad knob fails before any request runs), rebuilt per request group.
        self._sampler_config({})

    # --- TemplateLM plumbing --------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.loaded.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # --- log-likelihood -------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        def truncate(ctx: list[int], cont: list[int]):
            # The model reads context + continuation minus its last token: at most max_length
            # tokens, keeping the end (lm-eval's convention) and at least one context token.
            cont = cont[-self.max_length :]
            return ctx[-(self.max_length + 1 - len(cont)) :], cont

        order = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])))
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="twotower loglikelihood")
        for chunk in order.get_batched(n=self.batch_size):
            pairs = [truncate(ctx, cont) for _, ctx, cont in chunk]
            if self.scorer == "ar":
                scores = score_ar(self.model, pairs, self.loaded.pad_token_id)
            else:
                scores = score_mock_ar(self.model, pairs, self.loaded.pad_token_id)
            for (request, _, _), score in zip(chunk, scores):
                results.append(score)
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, score)
            progress.update(len(chunk))
        progress.close()
        return order.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for window in get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    # --- generation -----------------------------------------------------------------------------

    def _sampler_config(self, request: dict[str, Any]):
        choice = {}
        if request.get("do_sample") or request.get("temperature"):
            choice = {k: request[k] for k in ("temperature", "top_k", "top_p") if k in request}
        # Mask diffusion's blocks default to the S the model trained at (LoadedModel.block_size).
        trained = modes.trained_defaults(self.sampler, self.loaded.block_size)
        knobs = {**self.loaded.sampler_ids(), **trained, **self.knobs, **choice}
        takes = modes.knobs(self.sampler)
        if "mask_token_id" in takes:
            knobs.setdefault("mask_token_id", self.loaded.mask_token_id)
        knobs["max_new_tokens"] = request.get("max_gen_toks", self.max_gen_toks)
        return modes.build_config(self.sampler, **knobs)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        order = Collator(
            [request.args for request in requests],
            sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
            group_by="gen_kwargs",
            group_fn=lambda r: r[1],
        )
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="twotower generate")
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            request = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            unknown = sorted(set(request) - set(REQUEST_KNOBS))
            if unknown:
                raise UserError(
                    f"twotower: generation kwargs {unknown} are not supported "
                    f"(it takes {', '.join(REQUEST_KNOBS)})"
                )
            stops = handle_stop_sequences(request.get("until"), eos=None)
            config = self._sampler_config(request)
            room = self.max_length - config.max_new_tokens
            if room <= 0:
                raise UserError(
                    f"twotower: max_gen_toks={config.max_new_tokens} leaves no room for a prompt "
                    f"in max_length={self.max_length}"
                )
            prompts = [self.tok_encode(c)[-room:] or [self.loaded.eos_token_id] for c in contexts]

            def stopped(row: int, new: list[int], tokens: list[int], stops=stops) -> bool:
                text = self.tok_decode(tokens)
                return any(stop in text for stop in stops)

            out = modes.generate(self.model, prompts, self.sampler, config, on_commit=stopped)
            for context, tokens in zip(contexts, out.tokens):
                text = self.tok_decode(tokens)
                for stop in stops:
                    text = text.split(stop)[0]
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
            progress.update(len(chunk))
        progress.close()
        return order.get_original(results)


def _flag(name: str, value: bool | str) -> bool:
    """A model_args boolean: lm-eval turns ``true``/``false``/``1`` into Python values, a
    programmatic caller may pass the strings."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise UserError(f"twotower: {name}={value!r}; use true or false")
