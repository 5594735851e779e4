"""Long Range Arena harness for mra_jax: data, models, training, evaluation."""
