// SCAL-SDT: hook the WebUI's own progress bar to our Train tab (as the WebUI's textualInversion.js does).
function scalSdtStart_scal_sdt_ti() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById('scal_sdt_ti_result'), gradioApp().getElementById('scal_sdt_ti_preview'), function() {}, function(progress) {
        gradioApp().getElementById('scal_sdt_ti_progress').innerHTML = progress.textinfo;
    });
    var res = Array.from(arguments);
    res[0] = id;
    return res;
}
