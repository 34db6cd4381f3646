# syntax=docker/dockerfile:1
# Build stage: install the locked dependencies, then the package, into /install.
FROM python:3.11-slim AS build
WORKDIR /src
# Exactly the versions (and files: hashes) in requirements.lock, nothing resolved at build time;
# its own layer, so a code change does not reinstall them.
COPY requirements.lock ./
RUN pip install --no-cache-dir --prefix=/install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir --prefix=/install --no-deps .

# Runtime stage: no build tools, a non-root user, a health check on /healthz.
FROM python:3.11-slim
# /data: without REDIS_URL, the embedded store's server keeps the bot's memory there. Created
# (owned by the bot user) before VOLUME, so a new volume starts out with that owner.
RUN useradd --create-home --uid 10001 bot \
 && install -d -o bot -g bot -m 700 /data
COPY --from=build /install /usr/local
USER bot
WORKDIR /home/bot
ENV PYTHONUNBUFFERED=1 HTTP_PORT=3000 DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import os, urllib.request; h = os.environ.get('OPS_HOST') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = f'[{h}]' if ':' in h else h; urllib.request.urlopen(f'http://{h}:{os.environ.get(\"OPS_PORT\") or 9090}/healthz', timeout=4)"
STOPSIGNAL SIGTERM
CMD ["python", "-m", "bot"]
