"""Apache Kafka in KRaft mode from the official broker jars on Maven Central.

``mvn dependency:copy-dependencies`` resolves ``org.apache.kafka:kafka_2.13``
with its runtime dependencies into a cache shared by every checkout; the
broker is then run exactly as ``bin/kafka-storage.sh format`` and
``bin/kafka-server-start.sh`` run it: the same main classes on a classpath.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from leadstage.local.process import port_open, read_pid, stop_pid, wait_for_port

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.leadstage.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <!-- the logging backend the broker distribution ships with -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{SLF4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.log
        level: WARN
      - name: org.apache.kafka
        level: WARN
"""


def fetch_broker_jars(cache: Path) -> Path:
    """The directory of broker jars, resolved with Maven on first use."""
    libs = cache / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka broker jars")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="kafka-libs-", dir=cache))
    (staging / "pom.xml").write_text(_POM)
    subprocess.run(  # noqa: S603 - fixed command line
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(staging / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging / 'libs'}",
        ],
        check=True,
    )
    libs.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(libs, ignore_errors=True)
    (staging / "libs").rename(libs)  # atomic: a half-fetched cache is never used
    shutil.rmtree(staging, ignore_errors=True)
    return libs


@dataclass(frozen=True)
class LocalKafka:
    root: Path
    port: int
    cache: Path
    host: str = "127.0.0.1"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def log_file(self) -> Path:
        return self.root / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _server_properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}",
                f"listeners=PLAINTEXT://{self.host}:{self.port},"
                f"CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.root / 'data'}",
                "num.partitions=6",
                "default.replication.factor=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )

    def _java(self, libs: Path, main_class: str, *args: str, heap: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java 17+ is needed to run the local Kafka broker")
        return [
            java,
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.yaml'}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def is_running(self) -> bool:
        return port_open(self.host, self.port)

    def started_here(self) -> bool:
        return read_pid(self.pid_file) is not None

    def start(self) -> bool:
        """Start the broker unless one already answers on the port. True if started now."""
        if self.is_running():
            return False
        libs = fetch_broker_jars(self.cache)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.properties"
        config.write_text(self._server_properties())
        (self.root / "log4j2.yaml").write_text(_LOG4J2)
        if not (self.root / "data" / "meta.properties").exists():
            cluster_id = (
                subprocess.run(  # noqa: S603
                    self._java(libs, "kafka.tools.StorageTool", "random-uuid", heap="128m"),
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            subprocess.run(  # noqa: S603
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--standalone",
                    heap="128m",
                ),
                check=True,
                capture_output=True,
            )
        # Detached through a short-lived shell: the broker is re-parented to init, so it
        # outlives this command and leaves no child process for us to reap.
        launcher = subprocess.run(  # noqa: S603
            [
                "/bin/sh",
                "-c",
                'nohup "$@" >>"$BROKER_LOG" 2>&1 </dev/null & echo $!',
                "sh",
                *self._java(libs, "kafka.Kafka", str(config), heap="768m"),
            ],
            env={**os.environ, "BROKER_LOG": str(self.log_file)},
            check=True,
            capture_output=True,
            text=True,
            start_new_session=True,
        )
        self.pid_file.write_text(launcher.stdout.strip())
        wait_for_port(self.host, self.port, timeout=90, what="Kafka", log=self.log_file)
        return True

    def stop(self, *, grace_seconds: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (0: kill at once, as in a crash)."""
        return stop_pid(
            self.pid_file, expect=str(self.root / "server.properties"), timeout=grace_seconds
        )


def wait_until_serving(bootstrap_servers: str, *, timeout: float = 60.0) -> None:
    """An open port is not a ready broker: wait until it answers a metadata request."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    async def probe() -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except (KafkaError, OSError) as error:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"Kafka at {bootstrap_servers} is not serving") from error
                await asyncio.sleep(0.5)
            finally:
                await admin.close()

    asyncio.run(probe())
