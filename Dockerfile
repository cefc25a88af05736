# Thin wrapper over the same install steps CI exercises (pip install -e ".[test]").
#   docker build -t ednn_tf .
#   docker run --rm -v $PWD/results:/app/results ednn_tf                       # Ising quick preset
#   docker run --rm ednn_tf python -m pytest -q                                # the test suite
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY . /app
RUN python -m pip install --no-cache-dir -e ".[test]"
CMD ["python", "experiments/ising.py"]
