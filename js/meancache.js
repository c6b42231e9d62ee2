// MeanCache nodes: editing help only. The server resolves presets itself, from the
// same table that js/presets.js is generated from; workflows behave the same without
// this file (API prompts, cm-cli, the tests never run it).
//
// - MeanCache Planner: choosing a preset writes its values into the custom-only
//   widgets and hides them; `custom` shows them. Widgets are never added, removed,
//   reordered or retyped, so saved `widgets_values` keep their positions.
// - MeanCache Planner / Report: a `text` list in the node's ui output is shown on the
//   node after a run (also on a cache hit, when the server re-sends the ui output).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { MEANCACHE_PRESETS } from "./presets.js";

const PLANNER = "MeanCachePlanner";
const SUMMARY_NODES = ["MeanCachePlanner", "MeanCacheReport"];
const { custom: CUSTOM, presets: PRESETS, custom_widgets: CUSTOM_WIDGETS } = MEANCACHE_PRESETS;

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// A widget whose input socket is linked takes its value from the link. It stays visible:
// the canvas places the link's end at the widget, so hiding it would leave the link dangling.
function isLinked(node, widget) {
  return node.inputs?.find((input) => input.widget?.name === widget.name)?.link != null;
}

// The preset's widget values, or undefined when the custom widgets are in use
// (`custom`, an unknown name, or a preset that comes in through a link).
function presetValues(node) {
  const preset = findWidget(node, "preset");
  if (!preset || isLinked(node, preset) || preset.value === CUSTOM) return undefined;
  return Object.hasOwn(PRESETS, preset.value) ? PRESETS[preset.value] : undefined;
}

function setValue(widget, value) {
  if (widget.value === value) return;
  widget.value = value; // plain assignment: no callback, no loop
  // The Vue ("Nodes 2.0") renderer keeps its own copy of each value and updates it in
  // the callback it wraps around each widget's own; core's control_after_generate
  // uses the same `value = v; callback(v)` pair for the same reason.
  if (globalThis.LiteGraph?.vueNodesMode) widget.callback?.(value);
}

// Hidden the way core's PreviewAny toggles widgets: `hidden` for the canvas renderer,
// `options.hidden` for the Vue renderer.
function setHidden(widget, hidden) {
  if (Boolean(widget.hidden) === hidden && Boolean(widget.options?.hidden) === hidden) return false;
  widget.hidden = hidden;
  if (widget.options) widget.options.hidden = hidden;
  return true;
}

// fit: shrink or grow the height to the visible widgets (a user's change).
// Otherwise only grow, so a workflow's saved size stays as it was saved.
function resize(node, fit) {
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width), fit ? height : Math.max(node.size[1], height)]);
  node.setDirtyCanvas?.(true, true);
}

function syncPlanner(node, fit) {
  const values = presetValues(node);
  let toggled = false;
  for (const name of CUSTOM_WIDGETS) {
    const widget = findWidget(node, name);
    if (!widget) continue;
    if (values) setValue(widget, values[name]);
    toggled = setHidden(widget, Boolean(values) && !isLinked(node, widget)) || toggled;
  }
  if (toggled || !fit) resize(node, fit);
  else node.setDirtyCanvas?.(true, true);
}

function setupPlanner(nodeType) {
  const onNodeCreated = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = onNodeCreated?.apply(this, arguments);
    const node = this;
    const preset = findWidget(node, "preset");
    if (preset) {
      const callback = preset.callback;
      preset.callback = function () {
        const r = callback?.apply(this, arguments);
        syncPlanner(node, true);
        return r;
      };
    }
    syncPlanner(node, true);
    return result;
  };

  // Loading a workflow, pasting, undo and redo set widget values without callbacks.
  const onConfigure = nodeType.prototype.onConfigure;
  nodeType.prototype.onConfigure = function () {
    const result = onConfigure?.apply(this, arguments);
    syncPlanner(this, false);
    return result;
  };

  // Linking or unlinking an input socket of `preset` or a custom widget.
  const onConnectionsChange = nodeType.prototype.onConnectionsChange;
  nodeType.prototype.onConnectionsChange = function (type, index) {
    const result = onConnectionsChange?.apply(this, arguments);
    const name = type === globalThis.LiteGraph?.INPUT ? this.inputs?.[index]?.widget?.name : undefined;
    if (!app.configuringGraph && (name === "preset" || CUSTOM_WIDGETS.includes(name))) syncPlanner(this, true);
    return result;
  };
}

function summaryText(output) {
  const text = output?.text;
  if (Array.isArray(text)) return text.filter((t) => typeof t === "string").join("\n");
  return typeof text === "string" ? text : "";
}

function setupSummary(nodeType) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (output) {
    const result = onExecuted?.apply(this, arguments);
    const text = summaryText(output);
    // The frontend's own text preview, the one the server's send_progress_text fills
    // (it finds the node by id in the graph on screen, hence the check).
    if (text && this.graph && this.graph === app.canvas?.graph) {
      api.dispatchCustomEvent("progress_text", { nodeId: String(this.id), text });
    }
    return result;
  };
}

app.registerExtension({
  name: "comfy-meancache.presets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === PLANNER) setupPlanner(nodeType);
    if (SUMMARY_NODES.includes(nodeData?.name)) setupSummary(nodeType);
  },
});
