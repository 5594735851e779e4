"""LRA data: generators, converters, TFDS array_record builders and grain loaders.

Entry points: `tasks.get_task`, `prepare_lib.prepare`, `pipeline.make_loader`.
"""
