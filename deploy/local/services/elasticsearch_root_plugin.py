"""The GET / plugin of the local Elasticsearch: the integration-test distribution leaves out
modules/rest-root, so without it `GET /` (the client's info() and ping()) would answer 405. It is
compiled at install time against the unpacked lib/ and serves the same document from the node's own
build and cluster metadata."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from deploy.local.base import StackPaths, run

SHIM_NAME = "rest-root-info"
SHIM_CLASS = "local.stack.esroot.RootInfoPlugin"

# GET / and HEAD /: the document modules/rest-root serves, built from Build.current() and the
# local cluster state, answered on the HTTP thread without a transport action.
_SHIM_JAVA = """package local.stack.esroot;

import org.apache.lucene.util.SetOnce;
import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.metadata.IndexNameExpressionResolver;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.io.stream.NamedWriteableRegistry;
import org.elasticsearch.common.settings.ClusterSettings;
import org.elasticsearch.common.settings.IndexScopedSettings;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.common.settings.SettingsFilter;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestController;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

import java.util.Collection;
import java.util.List;
import java.util.function.Predicate;
import java.util.function.Supplier;

public final class RootInfoPlugin extends Plugin implements ActionPlugin {

    private final SetOnce<ClusterService> clusterService = new SetOnce<>();

    @Override
    public Collection<?> createComponents(PluginServices services) {
        clusterService.set(services.clusterService());
        return List.of();
    }

    @Override
    public Collection<RestHandler> getRestHandlers(
        Settings settings,
        NamedWriteableRegistry namedWriteableRegistry,
        RestController restController,
        ClusterSettings clusterSettings,
        IndexScopedSettings indexScopedSettings,
        SettingsFilter settingsFilter,
        IndexNameExpressionResolver indexNameExpressionResolver,
        Supplier<DiscoveryNodes> nodesInCluster,
        Predicate<NodeFeature> clusterSupportsFeature
    ) {
        return List.of(new RootInfoHandler(clusterService::get));
    }

    static final class RootInfoHandler extends BaseRestHandler {
        private final Supplier<ClusterService> clusterService;

        RootInfoHandler(Supplier<ClusterService> clusterService) {
            this.clusterService = clusterService;
        }

        @Override
        public String getName() {
            return "root_info_action";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        public boolean canTripCircuitBreaker() {
            return false;
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            final boolean pretty = request.hasParam("pretty") == false;
            return channel -> {
                ClusterService cs = clusterService.get();
                Build build = Build.current();
                XContentBuilder builder = channel.newBuilder();
                if (pretty) {
                    builder.prettyPrint().lfAtEnd();
                }
                builder.startObject();
                builder.field("name", cs.localNode().getName());
                builder.field("cluster_name", cs.getClusterName().value());
                builder.field("cluster_uuid", cs.state().metadata().clusterUUID());
                builder.startObject("version")
                    .field("number", build.qualifiedVersion())
                    .field("build_flavor", build.flavor())
                    .field("build_type", build.type().displayName())
                    .field("build_hash", build.hash())
                    .field("build_date", build.date())
                    .field("build_snapshot", build.isSnapshot())
                    .field("lucene_version", org.apache.lucene.util.Version.LATEST.toString())
                    .field("minimum_wire_compatibility_version", build.minWireCompatVersion())
                    .field("minimum_index_compatibility_version", build.minIndexCompatVersion())
                    .endObject();
                builder.field("tagline", "You Know, for Search");
                builder.endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, builder));
            };
        }
    }
}
"""

_SHIM_DESCRIPTOR = """description=GET / and HEAD / (cluster and version info) where rest-root is absent
version={version}
name={name}
classname={classname}
java.version=17
elasticsearch.version={version}
"""


def install_root_plugin(paths: StackPaths, home: Path, javac: Path, log: Path, version: str) -> None:
    """Compile the plugin against the unpacked lib/ and install it into home/plugins."""
    build = paths.install_dir("elasticsearch") / "shim-build"
    shutil.rmtree(build, ignore_errors=True)
    src = build / "src" / "local" / "stack" / "esroot" / "RootInfoPlugin.java"
    src.parent.mkdir(parents=True)
    src.write_text(_SHIM_JAVA)
    classes = build / "classes"
    classes.mkdir()
    run([str(javac), "--release", "17", "-nowarn", "-proc:none", "-cp", f"{home}/lib/*",
         "-d", str(classes), str(src)],
        what="install elasticsearch: compile the GET / plugin (javac)", timeout=300, log=log)
    plugin_dir = home / "plugins" / SHIM_NAME
    plugin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(plugin_dir / f"{SHIM_NAME}.jar", "w", zipfile.ZIP_DEFLATED) as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
        for path in sorted(classes.rglob("*.class")):
            jar.write(path, path.relative_to(classes).as_posix())
    (plugin_dir / "plugin-descriptor.properties").write_text(
        _SHIM_DESCRIPTOR.format(version=version, name=SHIM_NAME, classname=SHIM_CLASS))
    shutil.rmtree(build, ignore_errors=True)
