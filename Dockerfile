# syntax=docker/dockerfile:1
# modelplane service image. Not built on the development machines (no Docker engine there);
# kept correct by review. Build: docker build -t modelplane .
#
# Stage 1 bundles the operator dashboard with esbuild from the locked npm packages (npm ci
# layer rebuilt only when package-lock.json changes); it needs the GraphQL operations, which
# the bundle inlines. Stage 2 installs the locked Python dependencies in their own layer
# (rebuilt only when uv.lock changes), then the project itself, non-editable, into /app/.venv,
# with the bundle inside the package (modelplane/static, served at /).
FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY graphql/operations /src/graphql/operations
COPY dashboard/build.mjs ./
COPY dashboard/src ./src
RUN DASHBOARD_OUT=/src/static node build.mjs

FROM python:3.11-slim-bookworm AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable
COPY README.md ./
COPY modelplane ./modelplane
COPY --from=dashboard /src/static ./modelplane/static
COPY schema ./schema
COPY resolvers ./resolvers
COPY services ./services
COPY controllers ./controllers
COPY live ./live
COPY storage ./storage
COPY integrations ./integrations
RUN uv sync --frozen --no-dev --no-editable

# Stage 3: the runtime, with only the virtual environment and a non-root user.
FROM python:3.11-slim-bookworm
# git: the catalogue fetches and pushes its repository with Debian's git (integrations/git.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 modelplane \
 && useradd --system --uid 10001 --gid modelplane --home-dir /var/lib/modelplane --create-home modelplane
COPY --from=build --chown=root:root /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    MODELPLANE_ENVIRONMENT=production \
    MODELPLANE_HOST=0.0.0.0 \
    MODELPLANE_PORT=8080 \
    MODELPLANE_STATE_DIR=/var/lib/modelplane
USER 10001:10001
WORKDIR /var/lib/modelplane
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["modelplane"]
CMD ["serve"]
