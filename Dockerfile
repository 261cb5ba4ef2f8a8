# One image for every Tollgate service; the command picks the role:
#   docker run tollgate gateway | worker | sink | report | broker
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Named volumes mounted on /var/lib/tollgate/* take this ownership on first use.
RUN useradd --system --uid 10001 --create-home --home-dir /home/tollgate tollgate \
    && mkdir -p /var/lib/tollgate/lake /var/lib/tollgate/spool /var/lib/tollgate/stream \
    && chown -R tollgate:tollgate /var/lib/tollgate

WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

USER tollgate
WORKDIR /home/tollgate

ENTRYPOINT ["tollgate"]
CMD ["--help"]
