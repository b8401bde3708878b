// SCAL-SDT: hook the WebUI's own progress bar to our Train tabs (as the WebUI's textualInversion.js does).
function scalSdtProgressStarter(prefix) {
    return function() {
        var id = randomId();
        requestProgress(id, gradioApp().getElementById(prefix + '_result'), gradioApp().getElementById(prefix + '_preview'), function() {}, function(progress) {
            gradioApp().getElementById(prefix + '_progress').innerHTML = progress.textinfo;
        });
        var res = Array.from(arguments);
        res[0] = id;
        return res;
    };
}

var scalSdtStart_scal_sdt_ti = scalSdtProgressStarter('scal_sdt_ti');  // Embedding
var scalSdtStart_scal_sdt_hn = scalSdtProgressStarter('scal_sdt_hn');  // Hypernetwork

// The dataset editor's keyboard shortcuts (Tagger → Edit tags), when it is on screen and no text field has focus:
// n or → next image, p or ← previous, u first untagged; Ctrl+Z undo, Ctrl+Y or Ctrl+Shift+Z redo.
document.addEventListener('keydown', function(e) {
    var root = typeof gradioApp === 'function' ? gradioApp() : document;
    var gallery = root.getElementById('scal_sdt_edit_gallery');
    if (!gallery || gallery.offsetParent === null) return;
    var t = e.target;
    var typing = t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable);
    if (typing) return;
    var click = function(name) {
        var b = root.getElementById('scal_sdt_edit_' + name);
        if (b) { b.click(); e.preventDefault(); }
    };
    if (e.ctrlKey || e.metaKey) {
        if (e.key === 'z' && !e.shiftKey) click('undo');
        else if (e.key === 'y' || (e.key.toLowerCase() === 'z' && e.shiftKey)) click('redo');
        return;
    }
    if (e.key === 'n' || e.key === 'ArrowRight') click('next');
    else if (e.key === 'p' || e.key === 'ArrowLeft') click('prev');
    else if (e.key === 'u') click('untagged');
});

// The Queue tab follows its runner: while it is shown, its Refresh button is pressed every 3 s. (In the WebUI the
// Train tab is a Blocks of its own, rendered into the page: Gradio 3 never fires load events (``every=``) inside it,
// and it has no timer; on the page, Gradio's gr.Timer does the same.)
setInterval(function() {
    var root = typeof gradioApp === 'function' ? gradioApp() : document;
    var tab = root.getElementById('scal_sdt_queue_tab');
    var button = root.getElementById('scal_sdt_queue_refresh');
    if (tab && button && tab.offsetParent !== null && !document.hidden) button.click();
}, 3000);
