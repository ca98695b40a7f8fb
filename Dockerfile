# One image for the API, the station workers and the simulated chip.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# torch's CPU wheel first: a bare `torch` would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY hwctl ./hwctl
COPY drivers ./drivers
COPY api ./api
COPY migrations ./migrations
COPY benchmarks ./benchmarks
RUN pip install .
EXPOSE 8000 5025
CMD ["hwctl", "--help"]
