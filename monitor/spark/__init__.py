"""calmon's sketches computed on Spark, for histories no single calmon leader should fold.

``partials`` (pandas + calmon's sketch code, run on the executors), ``batches`` (sums to
``POST /v1/sketches`` parts), ``upload`` (posting them), ``job`` (the PySpark job; needs the
``spark`` extra: ``pip install 'calmon[spark]'``).
"""
