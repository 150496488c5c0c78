"""The stages of a recipe, one module each. Each has `run(generator, ctx) -> StageResult`."""
