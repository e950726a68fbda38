"""The plugins and families that ship with Jevons.

They are registered through the same plugin manager, and the same hooks, as a
third-party package's entry point (docs/architecture.md, "Conventions"): first the families, then the
kernels, then the method plugins. ``JEVONS_DISABLE_PLUGIN_AUTOLOAD`` never
removes these.
"""

BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("jevons.recipes.llm", "jevons.recipes.llm"),
    ("jevons.recipes.diffusion", "jevons.recipes.diffusion"),
    ("jevons.recipes.speech", "jevons.recipes.speech"),
    ("jevons.recipes.mixed_modal", "jevons.recipes.mixed_modal"),
    ("jevons.kernels", "jevons.kernels"),
    ("muon", "jevons.plugins.muon"),
    ("padding_aware_sampling", "jevons.plugins.padding_aware_sampling"),
    ("lowres_cascade", "jevons.plugins.lowres_cascade"),
    ("block_sparse_attention", "jevons.plugins.block_sparse_attention"),
    ("modality_experts", "jevons.plugins.modality_experts"),
    ("lora", "jevons.plugins.lora"),
    ("ema", "jevons.plugins.ema"),
    ("step_distillation", "jevons.plugins.step_distillation"),
)
"""``(plugin name, module)`` pairs, in registration order."""
