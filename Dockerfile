# One image for the api and the workers; docker-compose.yml picks the command.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/livepix
COPY pyproject.toml README.md ./
COPY app app
COPY actors actors
COPY livepix livepix
COPY static static
# A CUDA build of torch for the gpu worker; the api image only needs the base install.
ARG EXTRAS=workers
RUN pip install --no-cache-dir -e ".[${EXTRAS}]"
ENV LIVEPIX_HOST=0.0.0.0 LIVEPIX_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["livepix", "api"]
