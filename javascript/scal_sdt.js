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
