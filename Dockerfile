# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 bot
COPY --from=build /install /usr/local
USER bot
WORKDIR /home/bot
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "bot"]
