# One image for the worker and the HTTP shim of the Heimdall inference service.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY inference_worker inference_worker
COPY api_shim api_shim
COPY tasks tasks
COPY config config
RUN pip install --no-cache-dir .

ENV HEIMDALL_API_HOST=0.0.0.0
EXPOSE 8003
CMD ["heimdall-inference", "worker"]
